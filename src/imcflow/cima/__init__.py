"""cima"""
