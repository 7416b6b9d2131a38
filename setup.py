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
        "test": ["pytest>=7", "scikit-learn", "ruff>=0.6"],
    },
)
