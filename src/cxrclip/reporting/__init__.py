"""cxrclip.reporting"""
