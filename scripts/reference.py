#!/usr/bin/env python3
"""Reference fixtures for typoclip's parity tests, made with open_clip (the Python reference).

Builds CLIP models with open_clip at fixed seeds (random init, then every parameter and
BatchNorm statistic perturbed so that loading mistakes cannot hide behind zeros and ones),
rounds the weights that OpenAI stores in fp16 through fp16, and writes for each config:

  <name>.ts.pt              TorchScript archive, OpenAI-style fp16 weights (torch.jit.trace)
  <name>.state_dict.pt      torch.save(OrderedDict state_dict), OpenAI/open_clip naming, fp32
  <name>.wrapped.pt         torch.save({"state_dict": {"module." + k: v}, "epoch": 1})
  <name>.open_clip.safetensors   safetensors, open_clip naming
  <name>.hf.safetensors     safetensors, Hugging Face CLIPModel naming (ViT only)
  <name>.io.safetensors     inputs and reference outputs: images, tokens, image_features,
                            text_features, logits (fp32, computed by open_clip)

plus tokenizer.json (a fuzzed corpus and open_clip's token ids) and, when the shared photos are
present, preprocess.safetensors (CLIP's PIL + torchvision transform of real photos). The
`preprocess-modes` config writes preprocess-modes.safetensors/.json: open_clip's own eval
transform for each (interpolation, resize_mode) pair on generated odd-aspect PNGs and, when
present, a few shared photos.

The `hub-folders` config writes hub-style model folders (a non-OpenAI `preprocess_cfg`; a text
tower with a Hugging Face tokenizer.json) with open_clip's transform, HFTokenizer ids and
features (see `hub_folders_fixture`).

The `decode` config writes image files and the RGB bytes Pillow decodes them to
(`Image.open(p).convert("RGB")`, open_clip's first step), listed in decode.json: CMYK JPEGs that
Pillow writes (Adobe marker, transform 0), one with its Adobe marker removed, one made from a
shared photo when present, every JPEG a test put in `<out>/inputs/` beforehand, a CMYK table
converted without a JPEG, and a 16-bit grayscale PNG.

Used only by tests and benchmarks; never on the product's path. Never downloads weights.
"""
import argparse
import json
import os
import random
import shutil
import sys

import numpy as np
import torch
import open_clip
from open_clip.model import CLIP, convert_weights_to_lp
from safetensors.torch import save_file

TINY = {
    "tiny-vit": dict(
        embed_dim=64, quick_gelu=True,
        vision_cfg=dict(image_size=64, layers=2, width=128, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
    ),
    "tiny-rn": dict(
        embed_dim=64, quick_gelu=True,
        vision_cfg=dict(image_size=64, layers=[1, 2, 1, 1], width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2),
    ),
    # Every native option at once (open_clip's own names and defaults): a logit bias (sigmoid
    # scoring), GELU, head_width,
    # mlp_ratio, LayerScale, no_ln_pre, avg pool + final_ln_after_pool, LayerNorm eps; text
    # bidirectional, pooled at the last position, an nn.Linear projection with bias, GELU-tanh.
    "tiny-options": dict(
        embed_dim=64, init_logit_bias=-5.0,
        vision_cfg=dict(image_size=64, layers=2, width=128, head_width=32, mlp_ratio=3.5,
                        patch_size=16, ls_init_value=0.1, no_ln_pre=True, pool_type="avg",
                        final_ln_after_pool=True, norm_kwargs={"eps": 1e-6}),
        text_cfg=dict(context_length=32, vocab_size=1000, width=128, heads=4, layers=2,
                      mlp_ratio=3.0, ls_init_value=0.1, no_causal_mask=True, pool_type="last",
                      proj_bias=True, act_kwargs={"approximate": "tanh"},
                      norm_kwargs={"eps": 1e-6}),
    ),
    # Text pooled at the first eos_id, no projection; a 48 px ViT with avg pool before ln_post.
    "tiny-eos": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=48, layers=2, width=128, patch_size=16, pool_type="avg",
                        act_kwargs={"approximate": "tanh"}),
        text_cfg=dict(context_length=16, vocab_size=500, width=128, heads=2, layers=2,
                      pool_type="eos", eos_id=3, proj_type="none"),
    ),
    # A text tower that takes a Hugging Face tokenizer (the WordPiece `tokenizer.json` that
    # `hub-folders` trains), pooled at the last position (pads included), as SigLIP's.
    "tiny-hf-text": dict(
        embed_dim=64, quick_gelu=True,
        vision_cfg=dict(image_size=64, layers=2, width=128, patch_size=16),
        text_cfg=dict(context_length=24, vocab_size=640, width=128, heads=2, layers=2,
                      hf_tokenizer_name="typoclip-test/wordpiece",
                      tokenizer_kwargs={"clean": "lower"}, pool_type="last"),
    ),
}
# Fixture name -> open_clip architecture. The OpenAI-sized fixtures stand for OpenAI's files
# (their TorchScript export is what OpenAI ships), so they are the `-quickgelu` architectures;
# `ViT-B-32-gelu` is open_clip's `ViT-B-32` (GELU), as the LAION / DataComp tags build it.
ARCH = {
    "ViT-B-32": "ViT-B-32-quickgelu", "RN50": "RN50-quickgelu", "ViT-B-32-gelu": "ViT-B-32",
    "ViT-B-16": "ViT-B-16-quickgelu", "ViT-L-14": "ViT-L-14-quickgelu",
    "ViT-L-14-336": "ViT-L-14-336-quickgelu", "RN101": "RN101-quickgelu",
    "RN50x4": "RN50x4-quickgelu", "RN50x16": "RN50x16-quickgelu", "RN50x64": "RN50x64-quickgelu",
}
REAL_CI = ["ViT-B-32", "RN50", "ViT-B-32-gelu"]
PROMPTS = [
    "a photo of a cat.",
    "iPod",
    "a piggy bank covered in $$$",
    "",
    "The word RED, written in blue ink!",
    "Ünïcödé café — naïve façade 😀 🍎 東京",
    " ".join(["a very long prompt that will be truncated"] * 20),
]


def model_cfg(name):
    """The open_clip model config of a fixture (what its open_clip_config.json holds).
    `zoo-ARCH` is open_clip's ARCH; `zoo-ARCH@L` the same with L blocks per tower (the widths,
    head widths and MLP ratios of the real shapes, fewer blocks; a timm image tower gets
    `depth=L`, or `depths=(L, L, L, L)` for a ConvNeXt, `layers=(L, …)` for a FastViT, see
    `timm_depth`)."""
    if name in TINY:
        return TINY[name]
    if name.startswith("zoo-"):
        arch, _, depth = name[len("zoo-"):].partition("@")
        cfg = json.loads(json.dumps(open_clip.get_model_config(arch)))
        if depth:
            cfg["vision_cfg"]["layers"] = int(depth)
            cfg["text_cfg"]["layers"] = int(depth)
            if "multimodal_cfg" in cfg:
                cfg["multimodal_cfg"]["layers"] = int(depth)
        return cfg
    return open_clip.get_model_config(ARCH.get(name, name))


def timm_depth(name):
    """The block count of a `zoo-ARCH@L` fixture whose image tower is timm's (None: full depth).
    open_clip has no config field for a timm trunk's depth, so the fixture passes timm's own
    `depth` / `depths` argument to `timm.create_model`; the open_clip_config.json it writes
    then describes the full-depth model, and the tests build the cut one from the name."""
    _, _, depth = name.partition("@")
    if not name.startswith("zoo-") or not depth or not model_cfg(name)["vision_cfg"].get("timm_model_name"):
        return None
    return int(depth)


# The `config.json` values of the Hugging Face encoders open_clip's pretrained models name
# (open_clip reads them with `AutoConfig.from_pretrained`, which needs the hub):
# RobertaConfig() is roberta-base's; XLM-R differs in vocabulary and, for large, in size.
HF_TEXT = {
    "roberta-base": ("RobertaConfig", dict()),
    "xlm-roberta-base": ("XLMRobertaConfig", dict(vocab_size=250002)),
    "xlm-roberta-large": ("XLMRobertaConfig", dict(vocab_size=250002, hidden_size=1024,
                                                   num_hidden_layers=24, num_attention_heads=16,
                                                   intermediate_size=4096)),
}


# NLLB-200's distilled models (M2M100Config): 12 encoder layers with FFN 4096 (600M) or 24 with
# FFN 8192 (1.3B); the decoder, which open_clip drops, is given one layer to keep fixtures small.
NLLB = dict(vocab_size=256206, d_model=1024, encoder_attention_heads=16, decoder_attention_heads=16,
            decoder_layers=1, decoder_ffn_dim=1024, activation_function="relu", scale_embedding=True,
            max_position_embeddings=1024, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2)
HF_TEXT.update({
    "facebook/nllb-200-distilled-600M": ("M2M100Config", dict(NLLB, encoder_layers=12, encoder_ffn_dim=4096)),
    "facebook/nllb-200-distilled-1.3B": ("M2M100Config", dict(NLLB, encoder_layers=24, encoder_ffn_dim=8192)),
})


def hf_text_config(name, depth=None):
    import transformers
    cls, kw = HF_TEXT[name]
    if cls == "M2M100Config":
        if depth is not None:
            kw = dict(kw, encoder_layers=depth)
        return transformers.M2M100Config(**kw)
    kw = dict(kw, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if depth is not None:
        kw["num_hidden_layers"] = depth
    return getattr(transformers, cls)(**kw)


class _HfConfig:
    """Within the block, `AutoConfig.from_pretrained(NAME)` gives HF_TEXT's config offline
    (with `depth` layers for a cut fixture)."""

    def __init__(self, depth):
        self.depth = depth

    def __enter__(self):
        import open_clip.hf_model as hm
        self.hm, self.orig = hm, hm.AutoConfig.from_pretrained
        depth = self.depth
        hm.AutoConfig.from_pretrained = staticmethod(lambda name, *a, **k: hf_text_config(name, depth))

    def __exit__(self, *exc):
        self.hm.AutoConfig.from_pretrained = self.orig


class _TimmDepth:
    """Within the block, timm.create_model builds `depth` blocks (ConvNeXt: per stage)."""

    def __init__(self, depth):
        self.depth = depth

    def __enter__(self):
        import open_clip.timm_model as tm
        self.tm, self.orig = tm, tm.timm.create_model
        depth, orig = self.depth, self.orig

        def create_model(model_name, **kw):
            if depth is not None:
                if model_name.startswith("convnext"):
                    kw["depths"] = (depth,) * 4
                elif model_name.startswith("fastvit"):
                    # FastVit's `layers`: MCi3 and MCi4 have five stages, MCi0-2 four.
                    kw["layers"] = (depth,) * (5 if model_name in ("fastvit_mci3", "fastvit_mci4") else 4)
                else:
                    kw["depth"] = depth
            return orig(model_name, **kw)
        tm.timm.create_model = create_model

    def __exit__(self, *exc):
        self.tm.timm.create_model = self.orig


def build(name):
    """Exactly as open_clip builds the architecture: no forced QuickGELU."""
    if name in TINY or name.startswith("zoo-"):
        # open_clip's create_model builds CoCa(**model_cfg) for a config with a multimodal_cfg
        # (its text tower under `text.`), CustomTextCLIP(**model_cfg) for one with custom_text
        # (SigLIP), CLIP(**model_cfg) for the others.
        cfg = dict(model_cfg(name))
        if "multimodal_cfg" in cfg:
            cfg.pop("custom_text", None)
            return open_clip.CoCa(**cfg)
        hf = "hf_model_name" in cfg["text_cfg"]
        if hf:
            # Random weights from the offline config, never the hub's.
            cfg["text_cfg"] = dict(cfg["text_cfg"], hf_model_pretrained=False)
            cfg["custom_text"] = True
        _, _, depth = name.partition("@")
        with _TimmDepth(timm_depth(name)), _HfConfig(int(depth) if depth and hf else None):
            if cfg.pop("custom_text", False):
                return open_clip.CustomTextCLIP(**cfg)
            return CLIP(**cfg)
    return open_clip.create_model(ARCH.get(name, name), pretrained=None)


def make_model(name, seed):
    torch.manual_seed(seed)
    model = build(name)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        for bname, b in model.named_buffers():
            if bname.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif bname.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        model.logit_scale.fill_(float(np.log(1 / 0.07)) + 0.1)
    # Round what OpenAI stores in fp16 through fp16, so every export holds identical values.
    lp = build(name)
    lp.load_state_dict(model.state_dict())
    try:
        convert_weights_to_lp(lp, dtype=torch.float16)
        half_keys = {k for k, v in lp.state_dict().items() if v.dtype == torch.float16}
    except AttributeError:
        # open_clip's converter cannot handle an nn.Linear text projection (proj_bias): such
        # models are not OpenAI's, so nothing is stored in fp16.
        half_keys = set()
    with torch.no_grad():
        sd = model.state_dict()
        for k in half_keys:
            sd[k].copy_(sd[k].half().float())
    return model, half_keys


def hf_state_dict(sd):
    """open_clip (OpenAI) naming -> Hugging Face CLIPModel naming, as transformers'
    convert_clip_original_pytorch_to_hf.py lays it out."""
    out = {}
    for k, v in sd.items():
        if k == "attn_mask" or k.endswith("num_batches_tracked"):
            continue
        if k.startswith("visual."):
            tower, rest = "vision_model.", k[len("visual."):]
        else:
            tower, rest = "text_model.", k
        if k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
            continue
        if k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
            continue
        if k == "logit_scale":
            out["logit_scale"] = v
            continue
        if ".resblocks." in rest:
            pre, post = rest.split(".resblocks.")
            idx, sub = post.split(".", 1)
            base = f"{tower}encoder.layers.{idx}."
            if sub.startswith("attn.in_proj_"):
                kind = "weight" if sub.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                out[base + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[base + f"self_attn.k_proj.{kind}"] = kk.contiguous()
                out[base + f"self_attn.v_proj.{kind}"] = vv.contiguous()
                continue
            sub = (sub.replace("attn.out_proj.", "self_attn.out_proj.")
                   .replace("ln_1.", "layer_norm1.").replace("ln_2.", "layer_norm2.")
                   .replace("mlp.c_fc.", "mlp.fc1.").replace("mlp.c_proj.", "mlp.fc2."))
            out[base + sub] = v
            continue
        rename = {
            "class_embedding": "embeddings.class_embedding",
            "conv1.weight": "embeddings.patch_embedding.weight",
            "positional_embedding": "embeddings.position_embedding.weight",
            "token_embedding.weight": "embeddings.token_embedding.weight",
            "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
            "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
            "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias",
        }
        out[tower + rename[rest]] = v
    n_pos = out["vision_model.embeddings.position_embedding.weight"].shape[0]
    out["vision_model.embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    out["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return out


def hf_folder(name, cfg, sd, folder):
    """A Hugging Face `CLIPModel` folder (config.json + model.safetensors) made by transformers
    itself from the same weights (strict load), with the activation of the open_clip config."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError:
        return
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    hf_cfg = CLIPConfig(
        projection_dim=cfg["embed_dim"],
        text_config=dict(hidden_size=t["width"], intermediate_size=4 * t["width"],
                         num_attention_heads=t["heads"], num_hidden_layers=t["layers"],
                         max_position_embeddings=t["context_length"], vocab_size=t["vocab_size"],
                         hidden_act=act, layer_norm_eps=1e-5),
        vision_config=dict(hidden_size=v["width"], intermediate_size=4 * v["width"],
                           num_attention_heads=v["width"] // 64, num_hidden_layers=v["layers"],
                           image_size=v["image_size"], patch_size=v["patch_size"],
                           hidden_act=act, layer_norm_eps=1e-5),
    )
    hf = CLIPModel(hf_cfg)
    missing, unexpected = hf.load_state_dict(hf_state_dict(sd), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    hf.save_pretrained(folder, safe_serialization=True)


def export(name, out_dir, seed):
    model, half_keys = make_model(name, seed)
    res = model.visual.image_size
    res = res[0] if isinstance(res, (tuple, list)) else res
    g = torch.Generator().manual_seed(seed + 2)
    images = torch.randn(3, 3, res, res, generator=g)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tcfg = model_cfg(name)["text_cfg"]
    ctx, vocab = tcfg.get("context_length", 77), tcfg.get("vocab_size", 49408)
    if tcfg.get("hf_model_name"):
        # RoBERTa-style rows: <s> (0), random ids, </s> (2), then the padding id (1) — a
        # different length for each row, so the padding mask and the pool matter. NLLB's rows
        # start with a language code instead of <s> (here a random id).
        hf = hf_text_config(tcfg["hf_model_name"])
        vocab = hf.vocab_size
        tokens = torch.ones(len(PROMPTS), ctx, dtype=torch.long)
        for r in range(len(PROMPTS)):
            n = 2 + int(torch.randint(1, ctx - 2, (1,), generator=g))
            tokens[r, :n] = torch.randint(3, vocab, (n,), generator=g)
            tokens[r, n - 1] = 2
            if hf.model_type != "m2m_100":
                tokens[r, 0] = 0
    elif (ctx, vocab) == (77, 49408):
        tokens = tokenizer(PROMPTS)
    elif vocab == 49408:
        # CLIP's BPE at another context length (CoCa: 76), as open_clip's get_tokenizer makes it.
        tokens = tokenizer(PROMPTS, context_length=ctx)
    else:
        # Rows of random ids ending in an end token (the eos_id, or the highest id), zero-padded.
        end = tcfg.get("eos_id", vocab - 1) if tcfg.get("pool_type") == "eos" else vocab - 1
        tokens = torch.zeros(len(PROMPTS), ctx, dtype=torch.long)
        for r in range(len(PROMPTS)):
            n = int(torch.randint(1, ctx, (1,), generator=g))
            tokens[r, :n] = torch.randint(4, vocab - 1, (n,), generator=g)
            tokens[r, n - 1] = end
    with torch.no_grad():
        # Unnormalised features (CLIP's default; CoCa normalises unless told not to).
        img_f = model.encode_image(images, normalize=False)
        txt_f = model.encode_text(tokens, normalize=False)
        logits = model.logit_scale.exp() * torch.nn.functional.normalize(img_f, dim=-1) @ torch.nn.functional.normalize(txt_f, dim=-1).t()
        if getattr(model, "logit_bias", None) is not None:
            # SigLIP-style scoring: open_clip's logits carry the learned bias.
            logits = logits + model.logit_bias
    io = {"images": images, "tokens": tokens.long(), "image_features": img_f.contiguous(),
          "text_features": txt_f.contiguous(), "logits": logits.contiguous()}
    if any(hasattr(m, "reparameterize") for m in model.visual.modules()):
        # FastViT (MobileCLIP's MCi): the image features of the network timm's
        # `reparameterize_model` folds for inference, beside the train-time one's.
        # The trunk's feature map before the pool (`final_conv`'s output) too: random weights
        # and noise images leave little of the image in the pooled features, not so here.
        from timm.utils.model import reparameterize_model
        rep = reparameterize_model(model)
        with torch.no_grad():
            io["image_features_reparameterized"] = rep.encode_image(images, normalize=False).contiguous()
            io["final_conv"] = model.visual.trunk.forward_features(images).contiguous()
            io["final_conv_reparameterized"] = rep.visual.trunk.forward_features(images).contiguous()
    if name in ("tiny-vit", "tiny-rn"):
        # Zero-shot classifier of 10 ImageNet classes (every 100th) with the 80 CLIP templates.
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
        names = [IMAGENET_CLASSNAMES[i] for i in range(0, 1000, 100)]
        clf = open_clip.build_zero_shot_classifier(model, tokenizer, names, OPENAI_IMAGENET_TEMPLATES,
                                                   num_classes_per_batch=10, device="cpu", use_tqdm=False)
        with torch.no_grad():
            zs_logits = model.logit_scale.exp() * torch.nn.functional.normalize(img_f, dim=-1) @ clf
        io["zs_weights"] = clf.t().contiguous()
        io["zs_logits"] = zs_logits.contiguous()
    save_file(io, os.path.join(out_dir, f"{name}.io.safetensors"))

    sd = model.state_dict()
    with open(os.path.join(out_dir, f"{name}.open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg(name), "preprocess_cfg": {}}, f, indent=1)
    torch.save(sd, os.path.join(out_dir, f"{name}.state_dict.pt"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 1, "name": name},
               os.path.join(out_dir, f"{name}.wrapped.pt"))
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out_dir, f"{name}.open_clip.safetensors"))
    plain_vit = "visual.proj" in sd and name not in ("tiny-options", "tiny-eos") and not name.startswith("zoo-")
    if plain_vit:
        save_file(hf_state_dict(sd), os.path.join(out_dir, f"{name}.hf.safetensors"))
        hf_folder(name, model_cfg(name), sd, os.path.join(out_dir, f"{name}.hf"))

    if ("multimodal_cfg" in model_cfg(name) or model_cfg(name)["vision_cfg"].get("timm_model_name")
            or model_cfg(name)["text_cfg"].get("hf_model_name")):
        # CoCa is not shipped as TorchScript (its forward returns a dict of the decoder's
        # logits); neither are timm-tower or Hugging Face text-tower models (TorchScript is
        # OpenAI's format).
        print(f"reference: {name} ({res}px) written", file=sys.stderr)
        return
    with torch.no_grad():
        traced = torch.jit.trace(model, (images[:1], tokens[:1]), check_trace=False)
        for pname, p in traced.named_parameters():
            if pname in half_keys:
                p.data = p.data.half()
    traced.save(os.path.join(out_dir, f"{name}.ts.pt"))
    print(f"reference: {name} ({res}px) written", file=sys.stderr)


def tokenizer_corpus(out_dir, seed):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éèêëàâäôöûüçñßøåæœÉÀÖÜÇÑ",
        "😀🍎🐶🚀❤️👍🏽🇫🇷",
        "東京大阪こんにちはカタカナ한국어中文",
        "αβγδεζηθΣσςπΩ",
        "абвгдеёжзийКЛМН",
        "   \t\n",
        "’‘“”",
    ]
    words = ["iPod", "piggy bank", "a photo of a", "$$$", "don't", "it's", "we'll", "RED", "&amp;", "&lt;3",
             "granny smith", "<start_of_text>", "3.14159", "1,000,000"]
    texts = ["", " ", "a", "A photo of a cat.", "hello   world", "x" * 300, "word " * 100, "😀" * 50]
    for _ in range(400):
        n = rng.randint(1, 60)
        parts = []
        for _ in range(n):
            if rng.random() < 0.25:
                parts.append(rng.choice(words))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
            parts.append(rng.choice([" ", " ", "", "  ", "\t"]))
        texts.append("".join(parts))
    texts += ["cafÃ©", "Ã¼ber", "donâ€™t"]  # mojibake that ftfy repairs (typoclip does not)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    ids = tokenizer(texts)
    import ftfy
    # True where ftfy's mojibake repair (fix_encoding) changes the text: outside what typoclip reproduces.
    mojibake = [ftfy.fix_text(t) != ftfy.fix_text(t, fix_encoding=False) for t in texts]
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump([{"text": t, "tokens": [int(x) for x in row], "mojibake": m}
                   for t, row, m in zip(texts, ids, mojibake)], f, ensure_ascii=False)


def preprocess_fixture(out_dir, data_dir):
    from PIL import Image
    photos = []
    for sub, step in [("distill-in-the-wild/in-the-wild-2", 17), ("imagenet-sample", 97), ("scam-preview/SCAM", 233)]:
        d = os.path.join(data_dir, sub)
        if not os.path.isdir(d):
            continue
        names = sorted(n for n in os.listdir(d) if n.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
        photos += [os.path.join(d, n) for n in names[::step]]
    if not photos:
        print("reference: no shared photos found; skipping preprocess fixture", file=sys.stderr)
        return
    tensors = {}
    meta = []
    for n_px in (224, 288, 336):
        _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, force_image_size=n_px)
        for i, p in enumerate(photos):
            if n_px != 224 and i % 4:
                continue
            key = f"{n_px}/{i}"
            tensors[key] = preprocess(Image.open(p)).contiguous()
            meta.append({"key": key, "path": os.path.abspath(p), "n_px": n_px})
    save_file(tensors, os.path.join(out_dir, "preprocess.safetensors"))
    with open(os.path.join(out_dir, "preprocess.json"), "w") as f:
        json.dump(meta, f)


def preprocess_modes_fixture(out_dir, data_dir):
    """open_clip's eval transform (`image_transform_v2(PreprocessCfg(...), is_train=False)`) for
    every (interpolation, resize_mode) pair, square and non-square sizes, on generated
    odd-aspect images and, when present, a few shared photos."""
    from PIL import Image
    from open_clip.transform import PreprocessCfg, image_transform_v2
    rng = np.random.default_rng(20261201)
    images = []
    for w, h in [(9, 7), (7, 9), (1600, 90), (60, 900), (300, 1000), (301, 199), (224, 224), (225, 224),
                 (100, 100)]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [255 * x / max(w - 1, 1), 127.5 + 127.5 * np.sin(x / 4.0 + y / 7.0),
                  255.0 * ((x // 5 + y // 3) % 2)]
        a = np.stack(planes, -1) + rng.normal(0, 20, (h, w, 3))
        path = os.path.join(out_dir, f"modes-{w}x{h}.png")
        Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB").save(path)
        images.append(path)
    photos = []
    for sub, step in [("imagenet-sample", 211), ("distill-in-the-wild/in-the-wild-2", 53)]:
        d = os.path.join(data_dir, sub)
        if os.path.isdir(d):
            names = sorted(n for n in os.listdir(d) if n.lower().endswith((".jpg", ".jpeg", ".png")))
            photos += [os.path.join(d, n) for n in names[::step]]
    # open_clip resizes the image in its own mode; typoclip decodes to RGB first, so only RGB
    # (and grayscale, resized channel by channel alike) photos are compared.
    photos = [p for p in photos if Image.open(p).mode in ("RGB", "L")]
    if not photos:
        print("reference: no shared photos found; preprocess-modes uses generated images only", file=sys.stderr)
    cfgs = []
    for interpolation in ("bicubic", "bilinear"):
        for resize_mode in ("shortest", "squash", "longest"):
            for size in (224, [160, 256]):
                cfg = dict(size=size, interpolation=interpolation, resize_mode=resize_mode)
                if resize_mode == "longest" and size != 224:
                    cfg["fill_color"] = 127
                if interpolation == "bilinear":
                    cfg.update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
                elif resize_mode == "squash":
                    cfg.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
                cfgs.append(cfg)
    tensors, meta = {}, []
    for c, cfg in enumerate(cfgs):
        transform = image_transform_v2(PreprocessCfg(**{**cfg, "size": tuple(cfg["size"]) if isinstance(cfg["size"], list) else cfg["size"]}), is_train=False)
        for i, path in enumerate(images + photos):
            key = f"{c}/{i}"
            tensors[key] = transform(Image.open(path)).contiguous()
            meta.append({"key": key, "path": os.path.abspath(path), "cfg": cfg})
    save_file(tensors, os.path.join(out_dir, "preprocess-modes.safetensors"))
    with open(os.path.join(out_dir, "preprocess-modes.json"), "w") as f:
        json.dump(meta, f)
    print(f"reference: preprocess-modes fixture ({len(cfgs)} configs x {len(images + photos)} images) written",
          file=sys.stderr)


HUB_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                  "resize_mode": "squash"}
HF_PROMPTS = ["a photo of a cat.", "iPod", "", "A piggy bank covered in $$$", "Granny Smith apple",
              "東京 café naïve", " ".join(["typographic attack"] * 30)]


def hub_folders_fixture(out_dir, seed):
    """Hub-style model folders and what open_clip computes from them:

      hub-preprocess/   tiny-vit with a non-OpenAI `preprocess_cfg` (mean/std 0.5, bilinear,
                        squash); hub-folders.safetensors holds open_clip's transform of the
                        generated hub-*.png (`pre/<i>`) and their image features
      hub-hf-text/      tiny-hf-text (its text tower takes `hf_tokenizer_name`) with the
                        WordPiece tokenizer.json + tokenizer_config.json trained here; the
                        safetensors holds open_clip's `HFTokenizer` ids of HF_PROMPTS
                        (`hf_tokens`) and their text features (`hf_text_features`)
    hub-folders.json lists the images and prompts."""
    from PIL import Image
    from open_clip.tokenizer import HFTokenizer
    from open_clip.transform import PreprocessCfg, image_transform_v2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference_hf_tokenizer as rht

    rng = np.random.default_rng(seed)
    paths = []
    for w, h in [(97, 61), (40, 130), (64, 64), (300, 1000)]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [255 * x / max(w - 1, 1), 127.5 + 127.5 * np.sin(x / 3.0 + y / 5.0),
                  255.0 * ((x // 4 + y // 6) % 2)]
        a = np.stack(planes, -1) + rng.normal(0, 25, (h, w, 3))
        path = os.path.join(out_dir, f"hub-{w}x{h}.png")
        Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB").save(path)
        paths.append(os.path.abspath(path))
    tensors = {}

    def folder(name, fixture, preprocess_cfg):
        model, _ = make_model(fixture, seed)
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": model_cfg(fixture), "preprocess_cfg": preprocess_cfg}, f, indent=1)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "open_clip_model.safetensors"))
        return model, d

    model, _ = folder("hub-preprocess", "tiny-vit", HUB_PREPROCESS)
    transform = image_transform_v2(PreprocessCfg(**{**HUB_PREPROCESS, "size": 64}), is_train=False)
    pre = [transform(Image.open(p)) for p in paths]
    for i, t in enumerate(pre):
        tensors[f"pre/{i}"] = t.contiguous()
    with torch.no_grad():
        tensors["image_features"] = model.encode_image(torch.stack(pre)).contiguous()

    model, d = folder("hub-hf-text", "tiny-hf-text", {})
    rht.train_wordpiece(rht.training_corpus(random.Random(seed)), d)
    shutil.rmtree(d + "-cased")
    tcfg = model_cfg("tiny-hf-text")["text_cfg"]
    tok = HFTokenizer(d, context_length=tcfg["context_length"], **tcfg["tokenizer_kwargs"])
    ids = tok(HF_PROMPTS)
    assert int(ids.max()) < tcfg["vocab_size"]
    with torch.no_grad():
        tensors["hf_tokens"] = ids.long().contiguous()
        tensors["hf_text_features"] = model.encode_text(ids).contiguous()
    save_file(tensors, os.path.join(out_dir, "hub-folders.safetensors"))
    with open(os.path.join(out_dir, "hub-folders.json"), "w") as f:
        json.dump({"images": paths, "prompts": HF_PROMPTS, "preprocess_cfg": HUB_PREPROCESS}, f)
    print("reference: hub-folders fixture written", file=sys.stderr)


def _without_app14(data):
    """The same JPEG without its Adobe (APP14) segment: libjpeg then reads plain CMYK."""
    out, i = bytearray(data[:2]), 2
    while i < len(data):
        assert data[i] == 0xFF, "unexpected byte between JPEG segments"
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data and later markers
            out += data[i:]
            break
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker != 0xEE:
            out += data[i:end]
        i = end
    assert len(out) < len(data), "no APP14 segment to remove"
    return bytes(out)


def decode_fixture(out_dir, data_dir):
    import hashlib
    from PIL import Image

    entries = []

    def record(name, path, rgb_image, opened):
        rgb = np.asarray(rgb_image.convert("RGB"), dtype=np.uint8)
        with open(os.path.join(out_dir, f"{name}.rgb"), "wb") as f:
            f.write(rgb.tobytes())
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        entries.append({"name": name, "file": os.path.relpath(path, out_dir), "sha256": sha,
                        "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                        "pillow_mode": opened.mode,
                        "adobe_transform": opened.info.get("adobe_transform")})

    def decoded(name, path):
        im = Image.open(path)
        record(name, path, im, im)

    rng = np.random.default_rng(20240601)

    def pattern(h, w):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                  127.5 + 127.5 * np.sin(x / 3.0 + y / 5.0), 255.0 * ((x // 8 + y // 8) % 2)]
        a = np.stack(planes, -1) + rng.normal(0, 12, (h, w, 4))
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)

    def save(name, cmyk, **kw):
        path = os.path.join(out_dir, f"{name}.jpg")
        Image.fromarray(cmyk, "CMYK").save(path, "JPEG", **kw)
        return path

    decoded("pillow-q90", save("pillow-q90", pattern(45, 67), quality=90))
    decoded("pillow-q75-420", save("pillow-q75-420", pattern(131, 203), quality=75, subsampling=2))
    decoded("pillow-progressive", save("pillow-progressive", pattern(64, 48), quality=85, progressive=True))
    with open(os.path.join(out_dir, "pillow-q90.jpg"), "rb") as f:
        plain = _without_app14(f.read())
    with open(os.path.join(out_dir, "no-adobe.jpg"), "wb") as f:
        f.write(plain)
    decoded("no-adobe", os.path.join(out_dir, "no-adobe.jpg"))

    photo = os.path.join(data_dir, "distill-in-the-wild", "in-the-wild-2", "apple-ipod.jpg")
    if os.path.isfile(photo):
        # Undercolour removal gives a real K channel (Pillow's own RGB->CMYK leaves K at 0).
        rgb = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64)
        k = 255 - rgb.max(-1)
        scale = np.where(k < 255, 255 / np.maximum(255 - k, 1e-9), 0)[..., None]
        cmy = (255 - rgb - k[..., None]) * scale
        cmyk = np.clip(np.rint(np.concatenate([cmy, k[..., None]], -1)), 0, 255).astype(np.uint8)
        decoded("photo", save("photo", cmyk, quality=92))

    inputs = os.path.join(out_dir, "inputs")
    if os.path.isdir(inputs):
        for n in sorted(os.listdir(inputs)):
            if n.endswith(".jpg"):
                decoded("inputs/" + n[:-4], os.path.join(inputs, n))

    c, k = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    table = np.stack([c, 255 - c, (7 * c + 3 * k) % 256, k], -1).astype(np.uint8)
    with open(os.path.join(out_dir, "cmyk-table.cmyk"), "wb") as f:
        f.write(table.tobytes())
    im = Image.fromarray(table, "CMYK")
    record("cmyk-table", os.path.join(out_dir, "cmyk-table.cmyk"), im, im)

    gray16 = (np.arange(16 * 64, dtype=np.uint32).reshape(16, 64) * 64 + 3).astype(np.uint16)
    path = os.path.join(out_dir, "gray16.png")
    Image.fromarray(gray16).save(path, "PNG")
    decoded("gray16", path)

    with open(os.path.join(out_dir, "decode.json"), "w") as f:
        json.dump(entries, f, indent=1)
    print(f"reference: decode fixture ({len(entries)} images) written", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", default="tiny-vit,tiny-rn," + ",".join(REAL_CI),
                    help="comma-separated; 'all' adds every OpenAI size")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    configs = args.configs.split(",")
    if configs == ["all"]:
        configs = list(TINY) + REAL_CI + REAL_ALL
    for name in configs:
        if name == "tokenizer":
            tokenizer_corpus(args.out, args.seed)
        elif name == "preprocess":
            preprocess_fixture(args.out, args.data)
        elif name == "preprocess-modes":
            preprocess_modes_fixture(args.out, args.data)
        elif name == "decode":
            decode_fixture(args.out, args.data)
        elif name == "hub-folders":
            hub_folders_fixture(args.out, args.seed)
        else:
            export(name, args.out, args.seed)


if __name__ == "__main__":
    main()
