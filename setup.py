"""ssl4eo-jax: self-supervised pre-training on Sentinel-2 imagery in JAX/Flax."""

from setuptools import find_packages, setup

# The archive converters in data_prep/ (GeoTIFF, HDF5, parquet, TFDS readers).
PREP = ["rasterio>=1.3", "h5py>=3.8", "pandas>=2.0", "pyarrow>=12", "tensorflow-datasets>=4.9"]

# Accelerator runtimes matching the pinned jax (as jax's own extras of 0.10.2 name them):
# pip install -e '.[cuda12]' (or cuda13, tpu). tests/test_packaging.py keeps them consistent.
ACCELERATORS = {
    "cuda12": ["jax-cuda12-plugin[with-cuda]==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    "cuda13": ["jax-cuda13-plugin[with-cuda]==0.10.2", "jax-cuda13-pjrt==0.10.2"],
    "tpu": ["libtpu==0.0.42.*", "requests"],
}

setup(
    name="ssl4eo-jax",
    version="0.1.0",
    description="Self-supervised learning for multispectral Sentinel-2 imagery in JAX/Flax",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # configs/ are files loaded by path (--config=configs/<name>.py), not an installed package.
    packages=find_packages(include=["ssl4eo_jax", "ssl4eo_jax.*", "data_prep", "data_prep.*"]),
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "array_record==0.8.6",
        "ml_collections==1.1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",  # event files for TensorBoard, without TensorFlow
    ],
    extras_require={
        # torch==2.13.0 exactly: it installs a local CPU build on our machines (other specs pull CUDA).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.4", "torch==2.13.0", "safetensors>=0.4", "tensorboard>=2.16",
                 *PREP],
        # PyTorch interop: .safetensors needs only this; .pth/.pt files also need torch.
        "interop": ["safetensors>=0.4"],
        "tfds": ["tensorflow-datasets>=4.9"],
        # tensorboard --logdir runs: the viewer of the event files every run writes.
        "tensorboard": ["tensorboard>=2.16"],
        "prep": PREP,
        # python -m ssl4eo_jax.bench: the reference baselines (OpenCV augmentation, GeoTIFF reads, PyTorch step).
        "bench": ["opencv-python-headless>=4.8", "rasterio>=1.3", "torch==2.13.0"],
        **ACCELERATORS,
    },
    entry_points={"console_scripts": ["ssl4eo-jax=ssl4eo_jax.main:run"]},
)
