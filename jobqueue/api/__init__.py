"""The gRPC contract, as Python modules generated from ``proto/`` by ``make proto``.

``jobqueue.api.v1`` holds the generated code; nothing in it is written by hand except
its ``__init__``. The .proto files are the public contract; these modules follow them.
"""
