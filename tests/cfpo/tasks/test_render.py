import pytest

from cfpo.tasks import render_prompt

TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m.role }}\n{{ m.content }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
PROMPT = "What is 12 + 30? Give the final answer as an integer in \\boxed{}."


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def bos_tokenizers(tiny_model_dir, tmp_path_factory):
    """Copies of the tiny tokenizer that add a BOS, as Llama's do: one plain, one with a chat template."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    loaded = {}
    for name, template in [("plain", None), ("chat", TEMPLATE)]:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|bos|> $A", special_tokens=[("<|bos|>", tokenizer.bos_token_id)]
        )
        tokenizer.chat_template = template
        out = tmp_path_factory.mktemp(f"tokenizer-{name}")
        tokenizer.save_pretrained(out)
        loaded[name] = AutoTokenizer.from_pretrained(out)
    return loaded


def test_without_a_chat_template_the_plain_format_is_used(tiny_tokenizer):
    assert not tiny_tokenizer.chat_template
    rendered = render_prompt(tiny_tokenizer, PROMPT)
    assert not rendered.chat_template
    assert rendered.text == f"Question: {PROMPT}\nAnswer:"
    assert rendered.token_ids == tiny_tokenizer(rendered.text)["input_ids"]
    assert tiny_tokenizer.decode(rendered.token_ids) == rendered.text


def test_plain_format_keeps_the_tokenizers_bos(bos_tokenizers):
    tokenizer = bos_tokenizers["plain"]
    rendered = render_prompt(tokenizer, PROMPT)
    assert not rendered.chat_template and rendered.token_ids[0] == tokenizer.bos_token_id
    assert rendered.token_ids.count(tokenizer.bos_token_id) == 1


def test_the_chat_template_is_applied_with_the_generation_prompt(bos_tokenizers):
    tokenizer = bos_tokenizers["chat"]
    assert tokenizer.chat_template == TEMPLATE  # survived the save and reload
    rendered = render_prompt(tokenizer, PROMPT)
    assert rendered.chat_template
    assert rendered.text == f"<|bos|>user\n{PROMPT}<|eos|>\n<|bos|>assistant\n"
    # the template's two BOS tokens and no third one from the tokenizer
    assert rendered.token_ids.count(tokenizer.bos_token_id) == 2 and rendered.token_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(rendered.token_ids) == rendered.text
