#!/usr/bin/env python3
"""Reference for typoclip's tokenizer fuzz test (tests/tokenizer.rs): a deterministic fuzzed
corpus and open_clip's token ids for it.

Writes a JSON list of {"text", "tokens", "mojibake"} to --out: "tokens" is open_clip's
`tokenize(text)` row (ViT-B-32's tokenizer, context length 77, zero-padded); "mojibake" is
true where ftfy's mojibake repair (`fix_encoding`) changes the text, which typoclip does not
reproduce (see src/tokenizer.rs).

The corpus (fixed seed) mixes ASCII, punctuation, accents, Greek, Cyrillic, CJK, emoji (with
skin tones, ZWJ sequences, flags and tag sequences), zero-width and no-break spaces, line
breaks, and HTML character references of every kind Python's `html.unescape` and ftfy's
`unescape_html` treat differently: named ones with and without `;`, legacy names followed by
more letters (the longest-prefix rule), all-caps names, unknown and over-long names, decimal
and hex references to controls, C1/Windows-1252 code points, surrogates, non-characters,
values above U+10FFFF and huge ones, leading zeros, missing semicolons, references escaped
two to four times, text with `<` (which turns ftfy's unescaping off), long repeats and very
long strings. Numeric references name assigned code points only, besides the invalid ones
(see `code_point`).

Used only by tests; never on the product's path. Needs torch + open_clip (the test command
installs them into .venv); downloads nothing.
"""
import argparse
import json
import random
import unicodedata
from html.entities import html5

SEMI = sorted(k for k in html5 if k.endswith(";"))
LEGACY = sorted(k for k in html5 if not k.endswith(";"))

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "éèêëàâäôöûüçñßøåæœÉÀÖÜÇÑíóúýÿ",
    "αβγδεζηθικλμνξοπρσςτυφχψωΣΩΔ",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяКЛМН",
    "東京大阪こんにちはカタカナ한국어中文漢字",
    "’‘“”«»—–…",
]
EMOJI = ["😀", "🍎", "🐶", "🚀", "❤️", "👍🏽", "🇫🇷", "👩‍💻", "👨‍👩‍👧", "🏳️‍🌈", "✔", "☃",
         "🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"]
SPACES = ["\u00a0", "\u202f", "\u2007", "\u2009", "\u200b", "\u200c", "\u200d", "\u2060",
          "\ufeff", "\u3000", "\u2028", "\n", "\r\n", "\t", "  "]
# Characters that ftfy's other fixers change (and some they keep), written raw: entities decode
# to them too, and ftfy fixes what it decodes.
FTFY_BITS = ["\x91quoted\x92", "\x93", "\x94", "\x81", "\x9d", "\x1b[31m", "\x1b[0m", "\x1b[1;32m",
             "\x1b[", "\uff71\uff9e", "\uff8a\uff9f", "\uffe1", "\uffe3", "\uffa1", "\ufb05", "\u01f3",
             "\u01c4", "\u0149", "\u02bc", "\u0345", "\U0001d173", "\U000e0041", "\u206b", "\ufffc",
             "\x7f", "\x0b", "\x1c", "\r", "e\u0301", "\u0130", "\u03a3", "A\u03a3 ", "\u1e9e"]
WORDS = ["iPod", "piggy bank", "a photo of a", "$$$", "don't", "it's", "RED", "granny smith",
         "<start_of_text>", "3.14159", "1,000,000", "AT&T", "R&D", "rock & roll", "a&b", "Q&A"]


def rand_word(rng):
    pool = rng.choice(POOLS)
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))


def code_point(rng):
    """A code point for a numeric reference. Apart from the non-characters, none is unassigned
    in this Python's Unicode: the word-splitting regexes of open_clip (`regex` module) and
    typoclip (Rust `regex`) carry different Unicode versions, so a code point that only the
    newer one assigns (as a letter, say) splits differently, whatever the cleaning."""
    while True:
        cp = _code_point(rng)
        if cp > 0x10FFFF or unicodedata.category(chr(cp)) != "Cn" or _noncharacter(cp):
            return cp


def _noncharacter(cp):
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


def _code_point(rng):
    kind = rng.randrange(13)
    if kind == 0:
        return rng.randint(0, 0x20)                     # C0 controls, \t \n \f \r, space
    if kind == 1:
        return rng.randint(0x7F, 0xA0)                  # DEL, C1 / Windows-1252 remaps
    if kind == 2:
        return rng.randint(0xD800, 0xDFFF)              # surrogates
    if kind == 3:
        return rng.choice([rng.randint(0xFDD0, 0xFDEF), rng.randint(0, 0x10) * 0x10000 + 0xFFFE,
                           rng.randint(0, 0x10) * 0x10000 + 0xFFFF])  # non-characters
    if kind == 4:
        return rng.choice([0x110000, 0x10FFFF, 0x10FFFD, rng.randint(0x110000, 0xFFFFFFFF),
                           10 ** rng.randint(7, 40) + rng.randint(0, 999)])  # too large
    if kind == 5:
        return rng.randint(0x20, 0x7E)                  # ASCII
    if kind == 6:
        return rng.randint(0xA0, 0x2FF)                 # Latin-1, Latin Extended
    if kind == 11:
        return rng.randint(0xFF00, 0xFFEF)              # half- and full-width forms
    if kind == 7:
        return rng.choice([0x2018, 0x2019, 0x201C, 0x201D, 0xFB01, 0xFB03, 0xFF21, 0xFF41, 0x3000,
                           0x2028, 0x2029, 0x0085, 0x00A0, 0x200B, 0xFEFF, 0x206A, 0xFFF9, 0x0301,
                           0x0308, 0x0132, 0x01C7, 0x0149, 0x1F600, 0x1F3FD, 0x200D, 0xE0041, 0x02BC,
                           0x01C4, 0x01F1, 0x01F3, 0xFB05, 0x0345, 0x1D173, 0x0130, 0x03A3, 0x1E9E])
    if kind == 8:
        return rng.randint(0x300, 0x36F)                # combining marks (NFC after decoding)
    if kind == 9:
        return rng.randint(0x370, 0x4FF)                # Greek, Cyrillic
    if kind == 10:
        return rng.randint(0x1F300, 0x1FAFF)            # emoji
    return rng.randint(0x2000, 0xFFFF)                  # rest of the BMP


def numeric_ref(rng):
    cp = code_point(rng)
    zeros = "0" * rng.choice([0, 0, 0, 1, 3, 25])
    if rng.random() < 0.5:
        body = "#" + zeros + str(cp)
    else:
        digits = "%x" % cp
        digits = digits.upper() if rng.random() < 0.5 else digits
        body = "#" + rng.choice("xX") + zeros + digits
    # No digit or letter a-f after the digits: that would name another code point.
    end = rng.choice([";", ";", ";", "", "?98", " ", "z", "_1", "g;", ";;", "&"])
    return "&" + body + end


def named_ref(rng):
    kind = rng.randrange(9)
    if kind <= 2:
        return "&" + rng.choice(SEMI)
    if kind == 3:                                       # legacy name, no semicolon
        return "&" + rng.choice(LEGACY) + rng.choice(["", " ", "x", "é", "1", ";"])
    if kind == 4:                                       # longest-prefix rule
        return "&" + rng.choice(LEGACY) + rand_word(rng)[:6] + rng.choice([";", ""])
    if kind == 5:                                       # all caps (ftfy decodes some)
        name = rng.choice([k for k in SEMI if k == k.lower()] if rng.random() < 0.5 else
                          ["ntilde;", "eacute;", "szlig;", "amp;", "lt;", "notin;", "copy;"])
        return "&" + name.upper()
    if kind == 6:                                       # unknown name
        return "&" + rand_word(rng) + rng.choice([";", ""])
    if kind == 7:                                       # over-long name
        return "&" + rng.choice(LEGACY) + "x" * rng.randint(26, 40) + rng.choice([";", ""])
    return rng.choice(["&", "&#", "&#x", "&#;", "&#x;", "&;", "& ", "&&", "&#-1;", "&#+1;",
                       "&#\u0663;", "&\u00a0amp;", "&am", "&#xg"])


def escaped(rng, times):
    ref = rng.choice([numeric_ref, named_ref])(rng)
    for _ in range(times):
        ref = ref.replace("&", "&amp;")
    return ref


def fragment(rng):
    r = rng.random()
    if r < 0.22:
        return rand_word(rng)
    if r < 0.30:
        return rng.choice(WORDS)
    if r < 0.33:
        return rng.choice(EMOJI)
    if r < 0.36:
        return rng.choice(FTFY_BITS)
    if r < 0.44:
        return rng.choice(SPACES)
    if r < 0.64:
        return numeric_ref(rng)
    if r < 0.84:
        return named_ref(rng)
    if r < 0.95:
        return escaped(rng, rng.choice([1, 1, 1, 2, 3]))
    return rng.choice(["<", "<b>", "a < b", "<br/>", ">", "\n<"])


def corpus(seed):
    rng = random.Random(seed)
    texts = [
        "", " ", "a", "A photo of a cat.", "hello   world", "&", "&&&", "&#4?98", "&#4;", "&#0;",
        "&#x80;", "&#xD800;", "&#x110000;", "&#99999999999999999999;", "&amp", "&ampx", "&notin;",
        "&notit;", "&amp;amp;", "&amp;amp;amp;", "&amp;amp;amp;amp;", "&NTILDE;", "&rsquo;s",
        "it&#x2019;s &#xFB01;ne", "e&#x301;", "&#xFEFF;x", "a<b &amp;amp;", "x&amp;amp;\na<b &amp;amp;\n&amp;amp;",
        "&lt;3", "P&EACUTE;REZ", "BUNDESSTRA&SZLIG;E", "&nTILDE;", "&#X41;&#x41&#65&#065;",
        "x" * 300, "word " * 100, "😀" * 50, "&amp;" * 100, "&#4;" * 200, "&notit;" * 60,
        "ha" * 400, "&" * 500, "&#" + "9" * 200 + ";", "&#x" + "f" * 200, "&" + "a" * 100 + ";",
    ]
    for _ in range(1600):
        n = rng.randint(1, 30)
        parts = []
        for _ in range(n):
            parts.append(fragment(rng))
            parts.append(rng.choice([" ", " ", "", "", "  ", "\t"]))
        texts.append("".join(parts))
    for _ in range(40):                                 # long repeats
        texts.append(rng.choice([named_ref, numeric_ref, rand_word])(rng) * rng.randint(20, 300))
    for _ in range(20):                                 # very long strings
        texts.append(" ".join(fragment(rng) for _ in range(rng.randint(500, 2000))))
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20240613)
    args = ap.parse_args()

    import ftfy
    import torch
    import open_clip

    torch.set_num_threads(1)
    texts = corpus(args.seed)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    ids = tokenizer(texts, context_length=77)
    mojibake = [ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False) for t in texts]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump([{"text": t, "tokens": [int(x) for x in row], "mojibake": m}
                   for t, row, m in zip(texts, ids.tolist(), mojibake)], f, ensure_ascii=False)


if __name__ == "__main__":
    main()
