"""pip distribution of the ROS-independent part of chatspot_ros (core library and CLIs).

The ROS 2 package (interfaces, node, launch files) is built by colcon from CMakeLists.txt;
this file lets people use the referring core, the model runtime and the benchmarks without ROS.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "chatspot_ros" / "_version.py").read_text()).group(1)

setup(
    name="chatspot_ros",
    version=VERSION,
    description="Precise referring for robots: ask a multimodal LLM about points, boxes and polygons of images.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["chatspot_ros", "chatspot_ros.*"]),
    package_data={"chatspot_ros": ["py.typed", "models/*/*"]},  # models/: the shipped tabletop model
    install_requires=[
        "numpy",
        "pyyaml",
        "pillow",
        "opencv-python-headless",
        "torch>=2.1",
        "transformers>=4.45",
        "tokenizers",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        "test": ["pytest", "hypothesis"],
        "train": ["peft"],
        "vllm": ["openai"],  # the vllm backend's client (docs/vllm.md); also in requirements/runtime.txt
    },
    entry_points={
        "console_scripts": [
            "chatspot-ask = chatspot_ros.cli.ask:main",
            "chatspot-bench = chatspot_ros.cli.bench:main",
            "chatspot-build-engine = chatspot_ros.cli.build_engine:main",
            "chatspot-eval = chatspot_ros.cli.eval:main",
            "chatspot-train = chatspot_ros.cli.train:main",
            "chatspot-world = chatspot_ros.cli.world:main",
            "chatspot-replay = chatspot_ros.cli.replay:main",
            "chatspot-publish = chatspot_ros.cli.publish:main",
            "chatspot-agent = chatspot_ros.agent:main",
            "chatspot-studio = chatspot_ros.cli.studio:main",
        ]
    },
)
