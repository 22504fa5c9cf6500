"""Make docs/report.png and docs/explain.txt: the README's report screenshot and explain table.

Trains a tiny Llama on loglik.testing.CORPUS for 200 steps (so its probabilities mean
something), explains two responses, writes the HTML report and screenshots it with headless
Chromium, hovering one token through its #anchor:

    python docs/make_report_screenshot.py      # needs chromium on PATH
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from loglik import Scorer
from loglik.render.html import explain_report
from loglik.testing import CORPUS, sentencepiece_tokenizer, tiny_model

here = Path(__file__).parent
cache = Path(tempfile.gettempdir()) / "loglik-docs-model"     # reused by later runs
torch.manual_seed(0)
torch.set_num_threads(1)
if (cache / "config.json").exists():
    scorer = Scorer.from_pretrained(str(cache))
else:
    tok = sentencepiece_tokenizer()
    model = tiny_model("llama", len(tok), hidden=64, layers=2).train()
    ids = torch.tensor(tok(CORPUS)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        starts = torch.randint(0, len(ids) - 65, (16,))
        batch = torch.stack([ids[s:s + 65] for s in starts])        # (16, 65)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained: loss {loss.item():.3f}", file=sys.stderr)
    model.eval().save_pretrained(cache)
    tok.save_pretrained(cache)
    scorer = Scorer.from_hf(model, tok)
pairs = [("The capital of France is", " Paris. The capital of Italy is Rome."),
         ("The capital of France is", " Rome. The capital of Italy is Paris <b>!</b>")]
expls = [scorer.explain(p, r, top_k=3) for p, r in pairs]

from rich.console import Console

from loglik.render.terminal import print_explanation

console = Console(width=110, record=True)
print_explanation(expls[0], console, wide=True)
(here / "explain.txt").write_text(console.export_text(), encoding="utf-8")

with tempfile.TemporaryDirectory() as tmp:
    page = Path(tmp) / "report.html"
    page.write_text(explain_report(expls, title="loglik explain", model="tiny Llama "
                                   "(trained 200 steps on loglik.testing.CORPUS)"),
                    encoding="utf-8")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--no-first-run", "--disable-background-networking", "--disable-sync",
                    f"--user-data-dir={tmp}/profile", f"--screenshot={here / 'report.png'}",
                    "--window-size=860,560", page.as_uri() + "#t-0-6"],
                   check=True, capture_output=True)
print(here / "report.png")
