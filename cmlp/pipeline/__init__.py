"""The pipeline: control protocol, stage worker, orchestrator, host relay.

control.py       the JSON envelope v1 and its message catalogue
stage.py         StageWorker: control phase, data phase, request loop
orchestrator.py  Orchestrator: start-up, infer, health check, shutdown
relay.py         host relay of ciphertext between enclaves
gpt2.py          the GPT-2 executor and greedy generation
executor.py      the executor interface (test executors: tests/helpers/executors.py)
ids.py           request ids from the OS CSPRNG
"""
