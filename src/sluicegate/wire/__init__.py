"""Sans-IO codecs: bytes in, frames/events out. Nothing here touches asyncio or sockets."""
