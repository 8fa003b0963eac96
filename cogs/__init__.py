"""The Discord command surface: one feature per module, listed in ``bot.frontend.build``."""
