"""The checked-in gRPC stubs are what protoc makes from pollen.proto today."""

from pathlib import Path

from pollen.transport.rpc import codegen


def test_generated_stubs_are_not_stale(tmp_path: Path):
    for made in codegen.generate(tmp_path):
        checked_in = codegen.HERE / made.name
        assert checked_in.read_text() == made.read_text(), (
            f"{checked_in} is stale: run 'python -m pollen.transport.rpc.codegen' and commit the result")
