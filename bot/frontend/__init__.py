"""The Discord front end's glue that ``cogs/`` use.

The client and :data:`~bot.frontend.client.Interaction`, the command tree and its error
handler, replies, the translator, the fleet's IDENTIFY turns, and the factory that puts
them together (:mod:`bot.frontend.build`). Only this package and ``cogs/`` import
discord.py.
"""
