"""The advtrain model zoo.

Every model takes images in [0, 1], normalises them inside (`Normalize`, non-persistent buffers)
and returns logits. The two WideResNets share parameter names with RobustBench's architecture
classes, so exported weights load there with `strict=True`.
"""

from advtrain.models.normalize import Normalize
from advtrain.models.preact_resnet import PreActResNet18
from advtrain.models.registry import MODEL_NAMES, build_model, load_model_state, model_kwargs
from advtrain.models.resnet import ResNet18
from advtrain.models.small_cnn import SmallCNN
from advtrain.models.wide_resnet import DMWideResNet, WideResNet

__all__ = [
    "MODEL_NAMES",
    "DMWideResNet",
    "Normalize",
    "PreActResNet18",
    "ResNet18",
    "SmallCNN",
    "WideResNet",
    "build_model",
    "load_model_state",
    "model_kwargs",
]
