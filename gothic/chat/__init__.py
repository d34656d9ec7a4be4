"""The chat behind `gothic-chat` and `make chat`: talk to a checkpoint, token by token.

Four modules, each importing only those above it in this list:

    session.py   what a chat remembers (model, settings, conversation) and how turns become a prompt
    view.py      everything shown on screen: header, tables, notes, the typewriter, the transcript
    commands.py  the slash commands: parsing, handlers and the COMMANDS registry
    repl.py      the loop: read a line, stream a reply or run a command; start_chat
"""

from gothic.chat.repl import run_chat, start_chat
from gothic.chat.session import ChatSession

__all__ = ["ChatSession", "run_chat", "start_chat"]
