"""Installs sam_jax: sharpness-aware training and calibration in JAX/Flax/Optax."""

from setuptools import find_packages, setup


def _requirements(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="sam_jax",
    version="0.1.0",
    description="Sharpness-aware optimizers, loss curvature and calibration in JAX/Flax/Optax.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sam_jax", "sam_jax.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "cuda12": ["jax[cuda12]"],
        "streaming": ["grain>=0.2.18", "array-record>=0.8.1", "pillow"],  # docs/data.md, "Streaming from ArrayRecord"
        "test": ["pytest>=7", "pytest-xdist", "scikit-learn", "ruff>=0.6"],
        # Building CIFAR-10-C from the CIFAR-10 (JPEG) test set (python -m sam_jax.data.make_cifar10_c,
        # docs/data.md): the maintained fork of imagecorruptions, same module and parameters; the
        # original 1.1.2 fails on fog (NumPy 2) and glass blur (scikit-image >= 0.19).
        "corruptions": ["imagecorruptions-imaug>=1.1.5"],
        # Preparing a dataset with TFDS (docs/data.md): its builders parse the archives with
        # TensorFlow (the CPU-only wheel where there is one, so that it leaves the GPUs to JAX),
        # and TFDS imports importlib_resources without declaring it.
        "tfds": [
            "tensorflow-cpu>=2.18; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "tensorflow>=2.18; platform_system != 'Linux' or platform_machine != 'x86_64'",
            "tensorflow-datasets>=4.9",
            "importlib_resources",
        ],
    },
)
