"""cxrclip.models"""
