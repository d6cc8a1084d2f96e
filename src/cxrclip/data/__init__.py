"""cxrclip.data"""
