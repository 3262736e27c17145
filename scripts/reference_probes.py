#!/usr/bin/env python3
"""Reference fixtures for typoclip's probe tests (tests/probes.rs), made with open_clip,
scipy and scikit-learn (the Python reference; never on the product's path).

Writes into --out:

  <name>.open_clip.safetensors  the weights of reference.py's perturbed random model <name>
  <name>.probes.safetensors     images, activations recorded by forward hooks on open_clip's
                                modules (tap/<site>) and their spatial pools (pooled/<site>:
                                ResNet mean over H x W, ViT mean over patch tokens, class token
                                excluded)
  concepts.safetensors + concepts.json   concept arithmetic on tiny-vit: unit concept
                                embeddings (bare-word template), the weighted sum normalised,
                                label embeddings ("a photo of a {}."), cosines; a mixture
                                of label and image embeddings decomposed by scipy.optimize.nnls
  logistic.safetensors + logistic.json   scikit-learn LogisticRegression (lbfgs, multinomial,
                                L2) on synthetic features: coef, intercept, predict_proba
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import open_clip
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import make_model, model_cfg  # noqa: E402

SITES = {
    "tiny-vit": [
        ("visual.transformer.resblocks.1", lambda m: m.visual.transformer.resblocks[1], "tokens"),
        ("visual.transformer.resblocks.0.mlp.c_fc", lambda m: m.visual.transformer.resblocks[0].mlp.gelu, "tokens"),
        ("visual.transformer.resblocks.1.mlp.c_fc", lambda m: m.visual.transformer.resblocks[1].mlp.gelu, "tokens"),
    ],
    "tiny-rn": [
        ("visual.layer4", lambda m: m.visual.layer4, "channels"),
        ("visual.layer3", lambda m: m.visual.layer3, "channels"),
        ("visual.layer2.1", lambda m: m.visual.layer2[1], "channels"),
    ],
}

EXPRESSION = [(1.0, "finance"), (0.5, "toys"), (-1.0, "illness"), (2.0, "soft smile")]


def pool(x, layout):
    return x.mean(dim=(2, 3)) if layout == "channels" else x[:, 1:, :].mean(dim=1)


def taps(name, out_dir, seed):
    model, _ = make_model(name, seed)
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out_dir, f"{name}.open_clip.safetensors"))
    with open(os.path.join(out_dir, f"{name}.open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg(name), "preprocess_cfg": {}}, f, indent=1)
    res = model.visual.image_size
    res = res[0] if isinstance(res, (tuple, list)) else res
    g = torch.Generator().manual_seed(seed + 7)
    images = torch.randn(4, 3, res, res, generator=g)
    recorded = {}
    handles = []
    for site, module, layout in SITES[name]:
        def hook(_m, _inp, output, site=site):
            recorded[site] = output.detach().clone()
        handles.append(module(model).register_forward_hook(hook))
    with torch.no_grad():
        feats = model.encode_image(images)
    for h in handles:
        h.remove()
    out = {"images": images, "image_features": feats.contiguous()}
    for site, _, layout in SITES[name]:
        x = recorded[site]
        if layout == "tokens" and x.shape[0] != images.shape[0]:
            x = x.permute(1, 0, 2)  # [L, B, W] -> [B, L, W] for sequence-first transformers
        out[f"tap/{site}"] = x.contiguous()
        out[f"pooled/{site}"] = pool(x, layout).contiguous()
    save_file(out, os.path.join(out_dir, f"{name}.probes.safetensors"))
    return model, images


def concepts(model, images, out_dir):
    from scipy.optimize import nnls
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    norm = torch.nn.functional.normalize
    with torch.no_grad():
        emb = norm(model.encode_text(tokenizer([c for _, c in EXPRESSION])).double(), dim=-1)
        w = torch.tensor([w for w, _ in EXPRESSION], dtype=torch.float64)
        v = norm(w @ emb, dim=-1)
        labels = [IMAGENET_CLASSNAMES[i] for i in range(0, 1000, 100)]
        lab = norm(model.encode_text(tokenizer([f"a photo of a {c}." for c in labels])).double(), dim=-1)
        cos = lab @ v
        x = norm(model.encode_image(images[:1]).double(), dim=-1)[0]
    # A random image embedding points away from every label here (random weights), which would
    # make the decomposition trivially zero: decompose a mixture with positive and negative parts.
    target = norm(0.6 * lab[2] + 0.3 * lab[7] - 0.4 * lab[4] + 0.2 * x, dim=-1)
    weights, rnorm = nnls(lab.numpy().T, target.numpy(), maxiter=10000)
    save_file({"concept_embeddings": emb.contiguous(), "vector": v.contiguous(),
               "label_embeddings": lab.contiguous(), "label_cosines": cos.contiguous(),
               "image_embedding": x.contiguous(), "nnls_target": target.contiguous(),
               "nnls_weights": torch.from_numpy(weights).contiguous()},
              os.path.join(out_dir, "concepts.safetensors"))
    with open(os.path.join(out_dir, "concepts.json"), "w") as f:
        json.dump({"terms": [[w, c] for w, c in EXPRESSION], "labels": labels,
                   "nnls_residual": float(rnorm)}, f)


def logistic(out_dir, seed):
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    sets = {
        # Well separated: every method reaches 100 % train accuracy.
        "separable": dict(classes=4, per=30, dim=12, spread=4.0, noise=0.5, C=10.0),
        # Overlapping: the regularisation matters.
        "overlapping": dict(classes=5, per=40, dim=8, spread=1.0, noise=1.0, C=0.5),
    }
    tensors, meta = {}, {}
    for name, s in sets.items():
        centres = rng.normal(size=(s["classes"], s["dim"])) * s["spread"]
        y = np.repeat(np.arange(s["classes"]), s["per"])
        X = centres[y] + rng.normal(size=(len(y), s["dim"])) * s["noise"]
        clf = LogisticRegression(C=s["C"], tol=1e-12, max_iter=100000, solver="lbfgs")
        clf.fit(X, y)
        tensors.update({f"{name}/x": torch.from_numpy(X), f"{name}/y": torch.from_numpy(y).long(),
                        f"{name}/coef": torch.from_numpy(clf.coef_.copy()),
                        f"{name}/intercept": torch.from_numpy(clf.intercept_.copy()),
                        f"{name}/proba": torch.from_numpy(clf.predict_proba(X))})
        meta[name] = {"C": s["C"], "n": int(len(y)), "classes": s["classes"],
                      "train_accuracy": float(clf.score(X, y))}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "logistic.safetensors"))
    import sklearn
    meta["sklearn_version"] = sklearn.__version__
    with open(os.path.join(out_dir, "logistic.json"), "w") as f:
        json.dump(meta, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    taps("tiny-rn", args.out, args.seed)
    vit, images = taps("tiny-vit", args.out, args.seed)
    concepts(vit, images, args.out)
    logistic(args.out, args.seed)
    print("reference_probes: written", file=sys.stderr)


if __name__ == "__main__":
    main()
