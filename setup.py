from setuptools import find_packages, setup

setup(
    name="dgan",
    version="0.1.0",
    description="Unsupervised cross-modal 3D deformable image registration with Deform-GAN",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dgan", "dgan.*"]),
    # the model folders shipped with dgan (dgan-register --model brain)
    package_data={"dgan": ["models/*/*.json", "models/*/*.keras", "models/*/*.md"]},
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tf-keras>=2.16,<2.22",
        "voxelmorph==0.2",
        "neurite==0.2",
        "numpy>=1.26",
        "scipy>=1.11",
        "nibabel>=5.0",
        "nilearn>=0.10",
        "matplotlib>=3.7",
        "tensorboard>=2.16",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "tensorflow-serving-api>=2.16"],
        "ants": ["antspyx>=0.4"],
    },
    entry_points={
        "console_scripts": [
            "dgan-train=dgan.cli.train:main",
            "dgan-train-baselines=dgan.bench.train_baselines:main",
            "dgan-evaluate=dgan.bench.evaluate:main",
            "dgan-bench-speed=dgan.bench.bench_speed:main",
            "dgan-probe-loss=dgan.bench.probe_loss:main",
            "dgan-probe-matching=dgan.bench.probe_matching:main",
            "dgan-bench-affine=dgan.bench.bench_affine:main",
            "dgan-bench-real=dgan.bench.bench_real:main",
            "dgan-register=dgan.cli.register:main",
            "dgan-export=dgan.cli.export:main",
        ]
    },
)
