"""cxrclip.evaluation"""
