from statex_hf.kernels.conv.naive import naive_causal_conv1d

__all__ = ["naive_causal_conv1d"]
