"""The front door: the `tandem` command, the chat app and the conversation store."""
