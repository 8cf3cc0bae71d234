"""Models are built from many threads at once (the demo serves requests in threads): building one must not change
how another, built at the same time or later, is initialized."""

import threading

import pytest
import torch
from transformers import AutoModel, PreTrainedModel

from tests.conftest import tiny_clip_config, tiny_config
from vitlm import VitlmDualEncoderForImageClassification, VitlmDualEncoderModel
from vitlm.clip_bpe import clip_tokenizer

CLASSES = ["red circle", "blue square", "green triangle"]
NUM_THREADS = 8


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def dual_encoder():
    torch.manual_seed(0)
    return VitlmDualEncoderModel(tiny_clip_config()).eval()


def seeded_vit(seed=0):
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config("vit"))


def assert_same_weights(model, reference):
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def assert_sanely_initialized(model):
    """Finite weights, and linear layers drawn with the configured std (0.02): not left as uninitialized memory."""
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert 0.01 < module.weight.std().item() < 0.04, name


def run_in_threads(*jobs):
    """Runs every job in its own thread, all released at once; returns their results, re-raising any error."""
    barrier, results, errors = threading.Barrier(len(jobs)), [None] * len(jobs), []

    def run(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_classifiers_and_models_built_in_many_threads_are_whole(tmp_path, tokenizer, dual_encoder):
    reference_classifier = VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder, tokenizer, CLASSES)
    saved = seeded_vit(1)
    saved.save_pretrained(tmp_path)
    before = seeded_vit()

    # every thread with its own tokenizer: a fast tokenizer's padding settings are not shared state to race on
    tokenizers = [clip_tokenizer() for _ in range(NUM_THREADS)]
    classifier_jobs = [
        lambda t=t: VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder, t, CLASSES)
        for t in tokenizers
    ]
    model_jobs = [lambda: AutoModel.from_config(tiny_config("vit"))] * NUM_THREADS
    loading_jobs = [lambda: AutoModel.from_pretrained(tmp_path)] * NUM_THREADS
    results = run_in_threads(*classifier_jobs, *model_jobs, *loading_jobs)
    classifiers = results[:NUM_THREADS]
    models = results[NUM_THREADS : 2 * NUM_THREADS]
    loaded = results[2 * NUM_THREADS :]

    for classifier in classifiers:
        assert_same_weights(classifier, reference_classifier)
    for model in models:  # torch's RNG is shared by the threads: their draws interleave, so only sanity is checked
        assert_sanely_initialized(model)
    for model in loaded:
        assert_same_weights(model, saved)
    assert_same_weights(seeded_vit(), before)


def test_building_a_classifier_leaves_initialization_alone_in_other_threads(tokenizer, dual_encoder):
    """Deterministic version of the race: two classifiers are paused in the middle of being built (where transformers'
    `no_init_weights` used to be entered, patching `torch.nn.init` for the whole process) while this thread builds a
    model, then they finish in the order that used to leave the patch in place for good."""
    init_functions = {name: getattr(torch.nn.init, name) for name in ("normal_", "trunc_normal_", "zeros_")}
    init_weights = PreTrainedModel.init_weights
    before = seeded_vit()
    entered = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    building = threading.local()

    class PausedClassifier(VitlmDualEncoderForImageClassification):
        def __init__(self, config):
            entered[building.index].set()
            release[building.index].wait(timeout=30)
            super().__init__(config)

    def build(index):
        building.index = index
        return PausedClassifier.from_dual_encoder(dual_encoder, clip_tokenizer(), CLASSES)

    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, build(i))) for i in range(2)]
    threads[0].start()
    assert entered[0].wait(timeout=30)
    threads[1].start()
    assert entered[1].wait(timeout=30)
    try:
        while_paused = seeded_vit()
    finally:
        release[0].set()
        threads[0].join()
        release[1].set()
        threads[1].join()

    assert_same_weights(while_paused, before)
    assert all(getattr(torch.nn.init, name) is function for name, function in init_functions.items())
    assert PreTrainedModel.init_weights is init_weights
    assert_same_weights(seeded_vit(), before)
    reference = VitlmDualEncoderForImageClassification.from_dual_encoder(dual_encoder, tokenizer, CLASSES)
    for classifier in results:
        assert type(classifier) is PausedClassifier
        assert_same_weights(classifier, reference)


def test_loads_and_builds_overlapping_in_threads_leave_torch_as_they_found_it(tmp_path):
    """transformers' loading sets torch's default dtype (here float16, the saved one) and patches `torch.nn.init`
    for the whole process while it runs, then puts back what it found; vitlm's loads and builds take turns, so
    overlapping ones cannot put back each other's changes for good."""
    saved = AutoModel.from_config(tiny_config("vit")).half()
    saved.save_pretrained(tmp_path)
    initializers = {name: getattr(torch.nn.init, name) for name in ("normal_", "trunc_normal_", "kaiming_uniform_")}
    loaded, built, failures = [], [], []

    def load():
        try:
            loaded.extend(AutoModel.from_pretrained(tmp_path) for _ in range(10))
        except Exception as error:  # noqa: BLE001  (reported below)
            failures.append(error)

    def build():
        try:
            built.extend(AutoModel.from_config(tiny_config("vit")) for _ in range(20))
        except Exception as error:  # noqa: BLE001
            failures.append(error)

    threads = [threading.Thread(target=target) for target in (load, build) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert torch.get_default_dtype() == torch.float32
    assert {name: getattr(torch.nn.init, name) for name in initializers} == initializers
    assert {model.dtype for model in loaded} == {torch.float16} and {model.dtype for model in built} == {torch.float32}
    assert all(model.embeddings.cls_token.abs().sum() > 0 for model in built)  # initialized, not left as allocated
