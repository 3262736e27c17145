#!/usr/bin/env python3
"""Reference for typoclip's Hugging Face tokenizer test (tests/hf_tokenizer.rs): tokenizers
trained here with Python `tokenizers`, saved as hub-style folders, and open_clip's
`HFTokenizer` ids for a deterministic fuzzed corpus.

Writes into --out:

  wordpiece/   tokenizer.json + tokenizer_config.json: a BERT-style WordPiece tokenizer
               (BertNormalizer lower-casing, BertPreTokenizer, `[CLS] $A [SEP]`), as CLIPA's
               `bert-base-uncased`; its pad token is not id 0, so padding and
               `strip_sep_token` (which writes 0) are told apart
  wordpiece-cased/  the same tokenizer.json with `do_lower_case: false` in its config, which
               `BertTokenizerFast` writes into the normalizer
  unigram/     tokenizer.json + tokenizer_config.json: a SentencePiece-style Unigram tokenizer
               (NFKC, runs of spaces collapsed by a regex, Metaspace `▁`, `$A </s>`), as
               SigLIP's T5 tokenizers
  gemma/       tokenizer.json + tokenizer_config.json: a Gemma-style byte-fallback BPE (spaces
               replaced by `▁`, no pre-tokenizer), as SigLIP 2's tokenizers, with
               `tokenizer_class: GemmaTokenizer` and no `add_*_token` flags: transformers'
               `GemmaTokenizerFast` then rewrites the file's post-processor (which adds
               nothing) into `<bos> $A`
  gemma-eos/   the same tokenizer.json with `add_bos_token: false, add_eos_token: true`
               (`$A <eos>`)
  roberta/     tokenizer.json + tokenizer_config.json: a byte-level BPE with RoBERTa's
               post-processor (`<s> $A </s>`, `<pad>` id 1), as roberta-base's
  xlmr/        tokenizer.json + tokenizer_config.json: a SentencePiece-style Unigram with
               `<s> $A </s>` (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3), as XLM-R's
  nllb/        tokenizer.json + tokenizer_config.json: a SentencePiece-style BPE with NLLB-200's
               special tokens and its 202 language codes, `tokenizer_class: NllbTokenizer`, whose
               post-processor transformers replaces by `<src_lang> $A </s>` (default `eng_Latn`)
  nllb-fra/, nllb-amh/, nllb-legacy/  the same tokenizer.json with `src_lang` fra_Latn, amh_Ethi,
               and `legacy_behaviour: true` (`$A </s> eng_Latn`). (open_clip's `language`
               argument is not used: transformers resets the language to `src_lang` on every
               call, so it has no effect.)
  unigram/scores-as-read.json, xlmr/scores-as-read.json
               each piece's score as the tokenizers library reads it from tokenizer.json
  cases.json   [{"folder", "context_length", "clean", "strip_sep_token", "ids": [[...]]}]
  corpus.json  [{"text", "mojibake"}]: "mojibake" is true where ftfy's mojibake repair
               changes the text (outside what typoclip reproduces, see src/tokenizer.rs)

The corpus reuses scripts/reference_tokenizer.py's fragments (ASCII, punctuation, accents,
Greek, Cyrillic, CJK, emoji, zero-width and no-break spaces, HTML references) plus
underscores, whitespace runs and texts far past the context length.

Used only by tests; never on the product's path. Downloads nothing.
"""
import argparse
import json
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_tokenizer as rt  # noqa: E402

TRAIN_WORDS = ("a photo of the cat dog iPod apple pizza library granny smith piggy bank "
               "typographic attack written label red blue green café naïve façade über "
               "東京 大阪 中文 漢字 こんにちは 한국어 αβγ Σίσυφος кошка собака emoji 😀 🍎 "
               "don't it's 3.14159 1,000,000 AT&T R&D rock roll under_score hyphen-ated").split()


def training_corpus(rng):
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 14)
        words = [rng.choice(TRAIN_WORDS) if rng.random() < 0.7 else rt.rand_word(rng) for _ in range(n)]
        lines.append(" ".join(words))
    return lines


def fuzz_corpus(rng):
    texts = ["", " ", "a", "A photo of a cat.", "hello   world", "under_score and__double",
             "[CLS] [SEP] [PAD] [UNK] [MASK]", "<pad></s><unk>", "</s> after eos", "ÀÉÎÕÜ ÇÑ",
             "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ", "x" * 300, "word " * 100, "😀" * 50, "ha" * 400,
             " \t\n leading and trailing \u3000\u00a0", "a\u200bb\u200cc\u200dd", "Straße ΣΑΣ İstanbul",
             "don't stop; won't stop!", "{}-{}_{}", "_" * 20, "--- ... ,,, !!!"]
    for _ in range(900):
        parts = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.12:
                parts.append(rng.choice(TRAIN_WORDS))
            elif r < 0.16:
                parts.append(rng.choice(["_", "__", "a_b", "snake_case_word", "_lead", "trail_"]))
            elif r < 0.22:
                parts.append(rng.choice(["   ", "\t\t", "\n\n", " \u00a0 ", "\u3000", "\r\n "]))
            else:
                parts.append(rt.fragment(rng))
            parts.append(rng.choice([" ", " ", "", "  ", "\t"]))
        texts.append("".join(parts))
    for _ in range(20):
        texts.append(" ".join(rng.choice(TRAIN_WORDS) for _ in range(rng.randint(40, 400))))
    for _ in range(10):
        texts.append(" ".join(rt.fragment(rng) for _ in range(rng.randint(200, 800))))
    return texts


def train_wordpiece(lines, folder):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=600, min_frequency=1,
                                        special_tokens=["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]"],
                                        show_progress=False)
    tok.train_from_iterator(lines, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": 512,
              "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
              "mask_token": "[MASK]"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    cased = folder + "-cased"
    os.makedirs(cased, exist_ok=True)
    shutil.copy(os.path.join(folder, "tokenizer.json"), cased)
    with open(os.path.join(cased, "tokenizer_config.json"), "w") as f:
        json.dump({**config, "do_lower_case": False}, f, indent=1)


def train_unigram(lines, folder):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.75, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    # special_tokens_map.json, as SentencePiece conversions ship it, instead of the config.
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64}, f, indent=1)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"pad_token": {"content": "<pad>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False},
                   "eos_token": "</s>", "unk_token": "<unk>"}, f, indent=1)


def train_gemma(lines, folder):
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tokens = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
    for name, flags in [("gemma", {}), ("gemma-eos", {"add_bos_token": False, "add_eos_token": True})]:
        d = os.path.join(os.path.dirname(folder), name)
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "GemmaTokenizer", **tokens, **flags}, f, indent=1)


def train_roberta(lines, folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0),
                                                      trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "RobertaTokenizer", "model_max_length": 512, "add_prefix_space": False,
                   "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}, f, indent=1)


def train_sentencepiece(lines, folder, model, specials, template, config):
    """A SentencePiece-style tokenizer (NFKC, Metaspace `▁`) of `model` ("unigram" or "bpe")."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    if model == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>",
                                          shrinking_factor=0.75, show_progress=False)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials, show_progress=False)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=template.replace("$A", "$A $B"),
        special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>") if t in template])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def train_xlmr(lines, folder):
    train_sentencepiece(lines, folder, "unigram", ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
                        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
                         "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                         "unk_token": "<unk>", "pad_token": "<pad>"})


def train_nllb(lines, folder):
    from transformers.models.nllb.tokenization_nllb_fast import FAIRSEQ_LANGUAGE_CODES
    # The file's own post-processor (`$A </s>`) is what NllbTokenizerFast replaces.
    train_sentencepiece(lines, folder, "bpe", ["<s>", "<pad>", "</s>", "<unk>"] + FAIRSEQ_LANGUAGE_CODES
                        + ["<mask>"], "$A </s>",
                        {"tokenizer_class": "NllbTokenizer", "model_max_length": 1024, "src_lang": None,
                         "tgt_lang": None, "legacy_behaviour": False,
                         "additional_special_tokens": FAIRSEQ_LANGUAGE_CODES})
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        config = json.load(f)
    for name, change in [("nllb-fra", {"src_lang": "fra_Latn"}), ("nllb-amh", {"src_lang": "amh_Ethi"}),
                         ("nllb-legacy", {"legacy_behaviour": True})]:
        d = os.path.join(os.path.dirname(folder), name)
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(folder, "tokenizer.json"), d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({**config, **change}, f, indent=1)


# (folder, context_length, clean, strip_sep_token)
CASES = [(folder, n, clean, strip)
         for folder, n, strips in [("wordpiece", 32, (False, True)), ("wordpiece", 8, (True,)),
                                   ("wordpiece-cased", 32, (False,)),
                                   ("unigram", 64, (False,)), ("unigram", 8, (False,)),
                                   ("gemma", 64, (False,)), ("gemma-eos", 64, (False,)),
                                   ("gemma-eos", 8, (False,)),
                                   ("roberta", 32, (False,)), ("roberta", 8, (False,)),
                                   ("xlmr", 32, (False,)), ("nllb", 32, (False,)), ("nllb", 8, (False,))]
         for clean in ("whitespace", "lower", "canonicalize")
         for strip in strips] + [(f, 32, "whitespace", False) for f in ("nllb-fra", "nllb-amh", "nllb-legacy")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261201)
    args = ap.parse_args()

    import ftfy
    import torch
    from open_clip.tokenizer import HFTokenizer

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rng = random.Random(args.seed)
    lines = training_corpus(rng)
    train_wordpiece(lines, os.path.join(args.out, "wordpiece"))
    train_unigram(lines, os.path.join(args.out, "unigram"))
    train_gemma(lines, os.path.join(args.out, "gemma"))
    train_roberta(lines, os.path.join(args.out, "roberta"))
    train_xlmr(lines, os.path.join(args.out, "xlmr"))
    train_nllb(lines, os.path.join(args.out, "nllb"))
    # Each Unigram piece score as the tokenizers library holds it after reading the file (its
    # JSON reader is not correctly rounded; written back shortest-round-trip, so exact here).
    from tokenizers import Tokenizer
    for folder in ("unigram", "xlmr"):
        path = os.path.join(args.out, folder)
        read = json.loads(Tokenizer.from_file(os.path.join(path, "tokenizer.json")).to_str())
        with open(os.path.join(path, "scores-as-read.json"), "w") as f:
            json.dump([score for _, score in read["model"]["vocab"]], f)
    texts = fuzz_corpus(rng)
    cases = []
    for folder, n, clean, strip in CASES:
        tok = HFTokenizer(os.path.join(args.out, folder), context_length=n, clean=clean, strip_sep_token=strip)
        ids = tok(texts)
        assert ids.shape == (len(texts), n)
        cases.append({"folder": folder, "context_length": n, "clean": clean, "strip_sep_token": strip,
                      "ids": ids.tolist()})
    mojibake = [ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False) for t in texts]
    with open(os.path.join(args.out, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump([{"text": t, "mojibake": m} for t, m in zip(texts, mojibake)], f, ensure_ascii=False)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f)
    print(f"reference: {len(cases)} HFTokenizer cases over {len(texts)} texts written", file=sys.stderr)


if __name__ == "__main__":
    main()
