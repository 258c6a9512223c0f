#!/usr/bin/env python3
"""Builds the demo model's training corpus from installed Debian documentation packages (see
tools/demo/build_corpus.sh, which installs them, and docs/DEMO_MODEL.md for the licences).
Writes OUT/plain.jsonl ({"src", "text"} documents), OUT/chat.jsonl ({"src", "text"} chat samples
already rendered with the DeepSeek V4 chat encoding), OUT/heldout.txt (2% of the plain documents,
never trained on) and OUT/stats.json. Python 3 standard library only.
Usage: extract_corpus.py OUT_DIR"""

import glob
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import subprocess
import sys

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT, THINK_END = "<｜User｜>", "<｜Assistant｜>", "</think>"
SYSTEMS = ["", "", "", "You are a helpful assistant.", "You are a friendly assistant who answers briefly."]
HELDOUT_MOD = 50  # documents whose sha1 % 50 == 0 (2%) are held out


def chat(user, answer, rng, system=None):
    """One chat-mode sample: BOS {system} <User> {user} <Assistant> </think> {answer} EOS."""
    if system is None:
        system = rng.choice(SYSTEMS)
    return f"{BOS}{system}{USER}{user}{ASSISTANT}{THINK_END}{answer}{EOS}"


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def clean(text):
    text = text.replace("\u00a0", " ").replace("\r\n", "\n").replace("\t", "    ")
    text = re.sub(r"[ ]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def pkg_files(pkg):
    out = subprocess.run(["dpkg", "-L", pkg], check=True, capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if os.path.isfile(p)]


# ---------------------------------------------------------------- reStructuredText (Sphinx sources)
_RST_HEADING = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def strip_rst(text):
    out, skip_indent = [], None
    for line in text.split("\n"):
        if skip_indent is not None:
            if line.strip() == "" or len(line) - len(line.lstrip()) > skip_indent:
                continue
            skip_indent = None
        m = re.match(r"^(\s*)\.\. ([\w:-]+)::(.*)$", line)
        if m:
            name, arg = m.group(2), m.group(3).strip()
            if name in ("function", "method", "class", "data", "attribute", "exception", "decorator",
                        "describe", "opcode", "cmdoption", "envvar", "option", "pdbcommand"):
                out.append(m.group(1) + arg)
            elif name in ("note", "warning", "seealso", "versionadded", "versionchanged", "deprecated",
                          "important", "tip", "impl-detail"):
                out.append(m.group(1) + (name.capitalize() + ": " + arg if arg else name.capitalize() + ":"))
            else:
                skip_indent = len(m.group(1))
            continue
        if re.match(r"^\s*\.\. ", line) or re.match(r"^\s*\.\.$", line):
            continue
        if _RST_HEADING.match(line):
            continue
        if re.match(r"^\s*:[\w -]+:", line) and not out:
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":[\w:+-]+:`~?!?([^`<]*?)\s*<[^`>]*>`", r"\1", text)
    text = re.sub(r":[\w:+-]+:`~?!?([^`]*)`", r"\1", text)
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\|(\w[\w -]*)\|", r"\1", text)
    text = re.sub(r"(?m)::$", ":", text)
    return clean(text)


def rst_sections(raw):
    """(title, body) for each heading of a Sphinx source (a title line followed by an underline)."""
    lines = raw.split("\n")
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and not _RST_HEADING.match(lines[i]) and _RST_HEADING.match(lines[i + 1])
             and len(lines[i + 1].strip()) >= len(lines[i].strip()) - 2]
    out = []
    for k, i in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        out.append((lines[i].strip(), "\n".join(lines[i + 2:end])))
    return out


def split_long(text, limit=6000):
    """Splits a long document at paragraph boundaries into pieces of at most ~limit characters."""
    if len(text) <= limit:
        return [text]
    pieces, cur = [], []
    size = 0
    for para in text.split("\n\n"):
        if size + len(para) > limit and cur:
            pieces.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        pieces.append("\n\n".join(cur))
    return pieces


# ---------------------------------------------------------------- HTML
class _Text(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag not in ("br", "li", "tr", "dt", "dd") else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(raw):
    p = _Text()
    p.feed(raw)
    text = "".join(p.parts)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n[ ]+", "\n", text)
    return clean(text)


# ---------------------------------------------------------------- sources
def python_docs(plain, chats, rng):
    root = "/usr/share/doc/python3.11/html/_sources"
    for path in sorted(glob.glob(root + "/**/*.rst.txt", recursive=True)):
        rel = os.path.relpath(path, root)
        if rel.startswith(("whatsnew/changelog", "license", "copyright")):
            continue
        raw = read(path)
        for piece in split_long(strip_rst(raw)):
            plain.append(("python3.11-doc", piece))
        for title, body in rst_sections(raw):
            answer = strip_rst(body)
            if rel.startswith("faq/") and title.endswith("?") and 40 <= len(answer) <= 1500:
                chats.append(("python3.11-doc faq", chat(title, answer, rng)))
            elif not rel.startswith("faq/") and 3 <= len(title) <= 60 and 100 <= len(answer) <= 1500:
                title = re.sub(r":[\w:+-]+:`~?!?([^`]*)`", r"\1", title).replace("``", "")
                q = rng.choice([f"Tell me about {title}.", f"Explain {title} in Python.",
                                f"What should I know about {title}?", f"Python: {title}?"])
                chats.append(("python3.11-doc sections", chat(q, answer, rng)))


def debian_policy(plain, chats, rng):
    for path in pkg_files("debian-policy"):
        if path.endswith(".rst.txt"):
            text = strip_rst(read(path))
        elif path.endswith((".txt", ".txt.gz")) and "/_sources/" not in path:
            text = clean(read(path))
        else:
            continue
        for piece in split_long(text):
            plain.append(("debian-policy", piece))


def debian_faq(plain, chats, rng):
    raw = read("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz").replace("\u00a0", " ")
    body = raw[raw.find("Chapter 1."):] if "Chapter 1." in raw else raw
    lines = body.split("\n")
    qs = [i for i, l in enumerate(lines) if re.match(r"^\d+\.\d+(\.\d+)?\. \S", l)]
    for k, i in enumerate(qs):
        end = qs[k + 1] if k + 1 < len(qs) else len(lines)
        j, title = i, lines[i].split(". ", 1)[1].strip()
        while not title.endswith(("?", ".")) and j + 1 < end and lines[j + 1].strip():
            j += 1
            title += " " + lines[j].strip()
        text = "\n".join(l.strip() for l in lines[j + 1:end] if not l.startswith("Chapter "))
        answer = clean(re.sub(r"(?<=\S)\n(?=\S)", " ", text))
        plain.append(("debian-faq", clean(title + "\n\n" + answer)))
        if title.endswith("?") and 40 <= len(answer) <= 2000:
            chats.append(("debian-faq", chat(title, answer, rng)))


def debian_reference(plain, chats, rng):
    for path in sorted(glob.glob("/usr/share/debian-reference/*.en.html")):
        for piece in split_long(html_text(read(path))):
            plain.append(("debian-reference-en", piece))


def doc_debian(plain, chats, rng):
    for name in ("constitution.txt.gz", "social-contract.txt.gz", "bug-reporting.txt.gz", "bug-log-access.txt",
                 "bug-maint-info.txt.gz", "bug-mailserver-refcard.txt", "mailing-lists.txt.gz",
                 "debian-manifesto.gz", "source-unpack.txt", "bug-log-mailserver.txt.gz", "bug-maint-mailcontrol.txt.gz"):
        path = "/usr/share/doc/debian/" + name
        if os.path.exists(path):
            for piece in split_long(clean(read(path))):
                plain.append(("doc-debian", piece))


def jargon(plain, chats, rng):
    raw = read("/usr/share/doc/jargon-text/jargon.txt.gz")
    start = raw.find("\n   :(TM): ")
    body = raw[start:] if start > 0 else raw
    entries = re.split(r"\n   :([^:\n]+):[^\n]*\n", "\n" + body)
    for k in range(1, len(entries) - 1, 2):
        term, text = entries[k].strip(), clean(re.sub(r"(?m)^   ", "", entries[k + 1]))
        text = re.sub(r"\{([^}]+)\}", r"\1", text)
        if not text:
            continue
        plain.append(("jargon-text", f"{term}\n\n{text}"))
        if 30 <= len(text) <= 1500:
            q = rng.choice([f"What does {term} mean?", f"What is {term}?", f"Define {term}.",
                            f"What does the jargon term \"{term}\" mean?"])
            chats.append(("jargon-text", chat(q, text, rng)))


_FORTUNE_ASKS = ["Tell me a fortune.", "Tell me something funny.", "Say something witty.",
                 "Give me a quote.", "Tell me a joke.", "Share a saying with me.", "Cheer me up."]


def fortunes(plain, chats, rng):
    seen = set()
    for pkg in ("fortunes", "fortunes-min", "fortunes-bofh-excuses", "fortunes-debian-hints"):
        for path in pkg_files(pkg):
            if not path.startswith("/usr/share/games/fortunes/") or path.count("/") != 5:
                continue
            if path.endswith((".dat", ".u8")) or path in seen:
                continue
            seen.add(path)
            topic = os.path.basename(path)
            items = [clean(x) for x in read(path).split("\n%\n")]
            items = [x.strip("%").strip() for x in items if x.strip("%").strip()]
            for k in range(0, len(items), 40):
                plain.append((pkg, "\n\n".join(items[k:k + 40])))
            for item in items:
                if len(item) > 1200 or (pkg == "fortunes" and rng.random() < 0.5):
                    continue
                if topic == "bofh-excuses":
                    q = rng.choice(["Why is the server down?", "Give me an excuse for the outage.",
                                    "What went wrong with the computer?"])
                elif topic == "debian-hints":
                    q = rng.choice(["Give me a hint about Debian.", "Tell me a Debian tip."])
                elif rng.random() < 0.4:
                    q = rng.choice([f"Tell me something about {topic}.", f"Give me a quote about {topic}.",
                                    f"Say something about {topic}."])
                else:
                    q = rng.choice(_FORTUNE_ASKS)
                chats.append((pkg, chat(q, item, rng)))


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(10)
    plain, chats = [], []
    for source in (python_docs, debian_policy, debian_faq, debian_reference, doc_debian, jargon, fortunes):
        source(plain, chats, rng)
    seen, train, held = set(), [], []
    for src, text in plain:
        if len(text) < 40:
            continue
        h = hashlib.sha1(re.sub(r"\s+", " ", text).encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        (held if int(h, 16) % HELDOUT_MOD == 0 else train).append((src, text))
    chat_seen, chat_out = set(), []
    for src, text in chats:
        h = hashlib.sha1(text.encode()).hexdigest()
        if h not in chat_seen:
            chat_seen.add(h)
            chat_out.append((src, text))
    with open(os.path.join(out_dir, "plain.jsonl"), "w", encoding="utf-8") as f:
        for src, text in train:
            f.write(json.dumps({"src": src, "text": text}, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "chat.jsonl"), "w", encoding="utf-8") as f:
        for src, text in chat_out:
            f.write(json.dumps({"src": src, "text": text}, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(text for _, text in held) + "\n")
    stats = {"plain_docs": len(train), "heldout_docs": len(held), "chat_samples": len(chat_out),
             "plain_chars": sum(len(t) for _, t in train), "heldout_chars": sum(len(t) for _, t in held),
             "chat_chars": sum(len(t) for _, t in chat_out), "by_source": {}}
    for src, text in train + chat_out:
        s = stats["by_source"].setdefault(src, {"items": 0, "chars": 0})
        s["items"] += 1
        s["chars"] += len(text)
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
