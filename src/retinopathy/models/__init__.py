"""The networks: the registry of architectures (our ResNets; torchvision's EfficientNet-B0 and ConvNeXt-Tiny),
their construction from scratch or from weights, and the grader around them."""
