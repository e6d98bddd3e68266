"""Hub-free tiny models for pure tests: a 256-token byte-level tokenizer and a 2-layer random Llama.

Importable from any test module (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

import torch

VOCAB = 256


def byte_tokenizer():
    """A 256-token byte-level tokenizer built in memory (no downloads): every byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def tiny_llama(seed: int = 0):
    """A 2-layer, 64-wide random Llama over :data:`VOCAB` tokens, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()
