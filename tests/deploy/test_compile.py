"""`torch.compile(fullgraph=True)` on every vitlm model and head: one graph, no graph breaks, no recompilation for a
new batch size, and the same outputs as eager."""

import pytest
import torch

from tests.models.test_contracts import (
    MODEL_CLASSES,
    assert_outputs_equal,
    build,
    inputs_for,
    per_sample_outputs,
)
from vitlm import VitlmTextModel


class GraphCounter:
    """A torch.compile backend counting the graphs Dynamo hands it (one per graph break or recompilation), then
    running each through AOTAutograd's tracing as the default backend would, without compiling kernels."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Dynamo's cache is per code object: models of one class in earlier tests would count against its recompile limit
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_compiles_to_one_graph_for_every_batch_size(model_class):
    model = build(model_class)
    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch_size in (2, 3, 5):
        inputs = inputs_for(model, batch_size, seed=batch_size)
        for tensor in inputs.values():
            torch._dynamo.mark_dynamic(tensor, 0)  # the batch dimension: a new size must not recompile
        with torch.no_grad():
            expected = per_sample_outputs(model, model(**inputs))
            actual = per_sample_outputs(model, compiled(**inputs))
        assert_outputs_equal(actual, expected, atol=1e-5)
    assert counter.graphs == 1


def test_a_compiled_text_tower_still_refuses_ids_outside_the_vocabulary():
    model = build(VitlmTextModel)
    compiled = torch.compile(model, backend=GraphCounter(), fullgraph=True)
    input_ids, attention_mask = inputs_for(model).values()
    input_ids[0, 0] = model.config.vocab_size
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        compiled(input_ids, attention_mask=attention_mask)
    with pytest.raises(ValueError, match="outside the vocabulary"):  # eager: the same message, as a ValueError
        model(input_ids, attention_mask=attention_mask)
