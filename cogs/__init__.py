"""The Discord command surface: one feature per module, loaded by ``bot.frontend.client``."""
