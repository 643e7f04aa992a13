from statex_hf.kernels.ssd.naive import naive_ssd

__all__ = ["naive_ssd"]
