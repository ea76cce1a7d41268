#!/usr/bin/env python3
"""Built-in checks of deploy/Dockerfile (run by scripts/check-deploy, standard library only).

Always: the contract of the image (builder rust:1.95-bookworm with cmake, pkg-config and the
OpenSSL/libcurl/zlib headers, their shared libraries in the runtime, slim/distroless
final stage, non-root uid 10001, EXPOSE 8080 9090, the hookbus binary and config path) and
the ignore file. With --lint also a few hadolint rules, used when hadolint itself is not
available: apt without --no-install-recommends or list cleanup, ADD for local files, `cd` in
RUN, :latest or untagged images, unknown COPY --from stages.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
BUILD_PACKAGES = ["cmake", "pkg-config", "libssl-dev", "libcurl4-openssl-dev", "zlib1g-dev"]
RUNTIME_PACKAGES = ["libssl3", "libcurl4", "zlib1g", "ca-certificates"]


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = n
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def main() -> int:
    lint = "--lint" in sys.argv
    errors: list[str] = []
    ins = instructions(DOCKERFILE.read_text())
    stages: list[tuple[str, str]] = []  # (image, alias)
    for n, op, args in ins:
        if op == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            stages.append((m.group(1), (m.group(2) or "").lower()))
    if not stages or stages[0][0].split("@")[0] != "rust:1.95-bookworm":
        errors.append("first stage must be FROM rust:1.95-bookworm (builder)")
    final = stages[-1][0] if stages else ""
    if not re.match(r"(debian:bookworm-slim|gcr\.io/distroless/cc-debian12(:\S+)?)(@sha256:[0-9a-f]{64})?$", final):
        errors.append(f"final stage {final!r} is not debian:bookworm-slim or distroless cc-debian12")
    body = DOCKERFILE.read_text()
    first_final = max(i for i, (_, op, _) in enumerate(ins) if op == "FROM")
    builder = [a for _, op, a in ins[:first_final] if op == "RUN"]
    if not any("cmake" in a for a in builder):
        errors.append("the builder stage must install cmake (librdkafka is built by rdkafka's cmake-build)")
    # The binary links OpenSSL, libcurl and zlib (librdkafka with TLS, SASL, OIDC): the builder
    # needs their headers and pkg-config, the runtime their shared libraries.
    for pkg in BUILD_PACKAGES:
        if not any(re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", a) for a in builder):
            errors.append(f"the builder stage must install {pkg} (librdkafka links OpenSSL, libcurl and zlib)")
    if not any("cargo build" in a and "--release" in a for a in builder):
        errors.append("the builder stage must run cargo build --release")
    final_ins = ins[first_final:]
    final_runs = [a for _, op, a in final_ins if op == "RUN"]
    if final.startswith("debian:"):
        for pkg in RUNTIME_PACKAGES:
            if not any(re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", a) for a in final_runs):
                errors.append(f"the final stage must install {pkg} (a shared library or the TLS roots of the binary)")
    users = [a for _, op, a in final_ins if op == "USER"]
    if not users or users[-1].split(":")[0] not in ("10001", "hookbus"):
        errors.append("final stage must end with USER 10001 (non-root)")
    exposed = {p for _, op, a in final_ins if op == "EXPOSE" for p in a.split()}
    if not {"8080", "9090"} <= exposed:
        errors.append(f"final stage must EXPOSE 8080 9090 (has {sorted(exposed)})")
    if "/usr/local/bin/hookbus" not in body or "/etc/hookbus/config.toml" not in body:
        errors.append("image must run /usr/local/bin/hookbus --config /etc/hookbus/config.toml")
    aliases = {alias for _, alias in stages if alias}
    for n, op, a in ins:
        m = re.search(r"--from=(\S+)", a) if op == "COPY" else None
        if m and m.group(1).lower() not in aliases and not m.group(1).isdigit():
            errors.append(f"line {n}: COPY --from={m.group(1)} names no stage")
    # Release engineering: OCI labels from build args, the git revision handed to build.rs,
    # dependencies built in a layer of their own (no `COPY . .`: a docs edit must not rebuild
    # librdkafka), bases pinned by digest or, while no digest could be looked up, saying so.
    labels = " ".join(a for _, op, a in final_ins if op == "LABEL")
    for key in ("title", "version", "revision", "created", "source"):
        if f"org.opencontainers.image.{key}=" not in labels:
            errors.append(f"the final stage must carry LABEL org.opencontainers.image.{key}")
    for _, op, a in ins:
        if op == "COPY" and re.fullmatch(r"(--\S+\s+)*\.\s+\.", a):
            errors.append("COPY . . copies the whole context: every edit would rebuild all dependencies")
    copies = [(i, a) for i, (_, op, a) in enumerate(ins[:first_final]) if op == "COPY"]
    manifests = next((i for i, a in copies if "Cargo.toml" in a and "Cargo.lock" in a and "src" not in a.split()), None)
    sources = next((i for i, a in copies if re.search(r"(^|\s)src/?(\s|$)", a)), None)
    dep_build = next((i for i, (_, op, a) in enumerate(ins[:first_final])
                      if op == "RUN" and "cargo build" in a and manifests is not None and i > manifests
                      and (sources is None or i < sources)), None)
    if manifests is None or sources is None or dep_build is None:
        errors.append("the builder must copy Cargo.toml and Cargo.lock, build the dependencies, then copy src/")
    if not re.search(r"ENV\s+HOOKBUS_REVISION=", body):
        errors.append("the builder must pass the REVISION build argument to build.rs as HOOKBUS_REVISION")
    for image, _ in stages:
        if image.lower() in {a for _, a in stages if a}:
            continue
        if "@sha256:" not in image and "not yet by digest" not in body:
            errors.append(f"base image {image} is neither pinned by digest nor documented as not yet pinned")
    ignore = IGNORE.read_text().split() if IGNORE.exists() else []
    for must in ("target", ".git"):
        if must not in ignore:
            errors.append(f"{IGNORE.relative_to(ROOT)} must exclude {must}")

    if lint:
        for n, op, a in ins:
            if op == "FROM":
                image = a.split()[0]
                if image.endswith(":latest") or (":" not in image and "@" not in image and image.lower() not in aliases):
                    errors.append(f"line {n}: pin the image tag of {image} (DL3006/DL3007)")
            if op == "ADD" and not re.search(r"https?://|\.tar", a):
                errors.append(f"line {n}: use COPY instead of ADD for local files (DL3020)")
            if op == "RUN":
                if re.search(r"(^|&&|;)\s*cd\s", a):
                    errors.append(f"line {n}: use WORKDIR instead of cd (DL3003)")
                if "apt-get install" in a and "--no-install-recommends" not in a:
                    errors.append(f"line {n}: apt-get install without --no-install-recommends (DL3015)")
                if "apt-get install" in a and " -y" not in a:
                    errors.append(f"line {n}: apt-get install without -y (DL3014)")
                if "apt-get install" in a and "rm -rf /var/lib/apt/lists" not in a:
                    errors.append(f"line {n}: delete the apt lists after installing (DL3009)")
                if "sudo " in a:
                    errors.append(f"line {n}: do not use sudo (DL3004)")
        if ins and ins[-1][1] not in ("CMD", "ENTRYPOINT") and not any(op == "ENTRYPOINT" for _, op, _ in ins):
            errors.append("no ENTRYPOINT/CMD")

    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        return 1
    print(f"  ok   deploy/Dockerfile: {len(stages)} stages, final {final}, USER {users[-1]}, "
          f"EXPOSE {' '.join(sorted(exposed))}{' (+ built-in lint rules)' if lint else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
