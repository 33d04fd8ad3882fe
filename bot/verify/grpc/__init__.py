"""gRPC answers judged like JSON ones: statuses by name, messages decoded with the base descriptors.

Modules: `status` (code names, the gRPC 5xx), `schema` (a compiled descriptor set: the safe unary
methods, requests built from descriptors, answers decoded into dicts with unknown fields kept),
`probes` (the probes planned and their answers compared by the response diff's machinery). Pure
judging: the pipeline sends the probes through the runtime.
"""
