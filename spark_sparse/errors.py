"""Exceptions with messages that say what was wrong and what is accepted."""


class UnsupportedLayerError(TypeError):
    """A dense layer the converter cannot turn into a sparse one (names its module path)."""

    def __init__(self, path: str, module, reason: str = ""):
        self.path = path
        self.module_type = type(module).__name__
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"cannot make layer '{path or '<root>'}' ({type(module).__module__}.{self.module_type}) "
            f"sparse{detail}. Supported: timm ResNets and ConvNeXts (V1/V2) built from Conv2d, "
            f"BatchNorm2d, LayerNorm, activations, MaxPool2d, AvgPool2d(2, 2), DropPath, GRN.")
