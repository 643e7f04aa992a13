from statex_hf.kernels.gla.naive import naive_recurrent_gla

__all__ = ["naive_recurrent_gla"]
