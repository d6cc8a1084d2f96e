"""cxrclip.training"""
