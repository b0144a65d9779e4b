"""The Ray-free core: messages, models, tools, memory, prompts and the ReAct engine.

Nothing in this package imports Ray; an agent built from it runs in a plain asyncio program.
"""
