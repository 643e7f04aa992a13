from statex_hf.kernels.conv.causal_conv1d import causal_conv1d

__all__ = ["causal_conv1d"]
