"""The top layer: the CLI, assembly into the LlamaIndex engine, the server, LangChain, export and vector stores.

It imports the core (and names stages and eval only as strings in the CLI's stage table); no module of the core,
the stages or eval imports it.
"""
