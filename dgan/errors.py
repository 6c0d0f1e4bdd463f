"""Errors that dgan reports to users as one line naming the file and the problem."""


class InputError(ValueError):
    """Bad user input: a missing, unreadable, corrupt or unsuitable file or argument.

    The message is one line, ``"<path>: <problem>"`` when a file is involved, so the command-line
    tools print it as it is, without a traceback.
    """

    def __init__(self, problem, path=None):
        self.path = None if path is None else str(path)
        self.problem = str(problem)
        super().__init__(self.problem if path is None else f"{self.path}: {self.problem}")


def one_line(error, limit=200):
    """An exception as one line of at most ``limit`` characters (its type when it says nothing),
    for messages that quote what a library below us raised."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""
