"""Hidden states and attentions come from transformers' own output capturing, and attention from transformers'
attention interface: what that machinery must keep doing for vitlm's towers."""

import threading

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tests.conftest import model_inputs, text_batch, tiny_config
from vitlm import VitlmDualEncoderModel, VitlmTextModel, VitlmViTModel
from vitlm.models.layers import VitlmAttention, VitlmBlock, eager_attention_forward


def build(model_class, config, attn_implementation="sdpa"):
    torch.manual_seed(0)
    return model_class._from_config(config, attn_implementation=attn_implementation).eval()


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_the_towers_record_their_outputs_with_transformers_output_capturing(tower):
    if tower == "vision":
        model = build(VitlmViTModel, tiny_config("vit"), "eager")
        inputs, final_norm = model_inputs(model), model.layernorm
    else:
        dual_config = tiny_config("dual")
        model = build(VitlmTextModel, dual_config.text_config, "eager")
        input_ids, attention_mask = text_batch(dual_config)
        inputs, final_norm = {"input_ids": input_ids, "attention_mask": attention_mask}, model.final_layer_norm
    assert model._can_record_outputs == {"hidden_states": VitlmBlock, "attentions": VitlmAttention}
    blocks = model.encoder.layers
    with torch.no_grad():
        plain = model(**inputs)
        # nothing asked for, nothing recorded (and no hook installed)
        assert plain.hidden_states is None and plain.attentions is None
        assert not any(block._forward_hooks for block in blocks)
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert all(block._forward_hooks and block.attention._forward_hooks for block in blocks)
    # what the hooks record: the first block's input, then every block's output, before the final LayerNorm
    assert len(outputs.hidden_states) == len(blocks) + 1 and len(outputs.attentions) == len(blocks)
    torch.testing.assert_close(final_norm(outputs.hidden_states[-1]), outputs.last_hidden_state, rtol=0, atol=0)


def test_threads_asking_one_model_for_different_outputs_each_get_their_own():
    model = build(VitlmDualEncoderModel, tiny_config("dual"), "eager")
    inputs = model_inputs(model)
    requests = [{}, {"output_hidden_states": True}, {"output_attentions": True}] * 4
    barrier, results, errors = threading.Barrier(len(requests)), [None] * len(requests), []

    def run(index):
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(3):
                    results[index] = model(**inputs, **requests[index])
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for request, outputs in zip(requests, results):
        for tower, config in (
            (outputs.vision_model_output, model.config.vision_config),
            (outputs.text_model_output, model.config.text_config),
        ):
            hidden_states, attentions = tower.hidden_states, tower.attentions
            if request.get("output_hidden_states"):
                assert len(hidden_states) == config.num_hidden_layers + 1
            else:
                assert hidden_states is None
            if request.get("output_attentions"):
                assert len(attentions) == config.num_hidden_layers
            else:
                assert attentions is None


def test_attention_runs_the_function_registered_in_transformers_attention_interface():
    calls = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(module)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["vitlm_test_recording"] = recording_attention
    try:
        model = build(VitlmDualEncoderModel, tiny_config("dual"), "vitlm_test_recording")
        sdpa = build(VitlmDualEncoderModel, tiny_config("dual"), "sdpa")
        inputs = model_inputs(model)
        with torch.no_grad():
            outputs = model(**inputs)
            expected = sdpa(**inputs)
            attention_modules = [m for m in model.modules() if isinstance(m, VitlmAttention)]
            assert calls == attention_modules  # every layer of both towers, in order, through the interface
            torch.testing.assert_close(outputs.logits_per_image, expected.logits_per_image, rtol=0, atol=1e-5)
            # attention weights need the eager path, whatever function is configured
            calls.clear()
            weighed = model(**inputs, output_attentions=True)
        assert calls == [] and len(weighed.vision_model_output.attentions) == len(model.vision_model.encoder.layers)
        torch.testing.assert_close(weighed.logits_per_image, outputs.logits_per_image, rtol=0, atol=1e-6)
    finally:
        del ALL_ATTENTION_FUNCTIONS["vitlm_test_recording"]
