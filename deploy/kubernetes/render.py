#!/usr/bin/env python3
"""Renders deploy/kubernetes/kustomization.yaml to one multi-document YAML on stdout.

kubectl (and so `kubectl kustomize`) is not packaged by Debian, so the tests render the
kustomization with this script, which implements exactly the subset of kustomize this directory
uses and refuses anything else:

  apiVersion/kind      must be kustomize.config.k8s.io/v1beta1 / Kustomization
  resources            files, rendered in order (each may hold several documents)
  namespace            set on every namespaced object (not on Namespace itself)
  labels[].pairs       added to every object's metadata.labels (includeSelectors: false, as
                       kustomize's default for `labels`: selectors and templates are untouched)

`kubectl kustomize deploy/kubernetes` produces the same objects (kustomize sorts them by kind).
Usage: render.py [DIR]   (default: this script's directory). Needs PyYAML.
"""
import os
import sys

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - SUPPORTED
    if unknown:
        sys.exit(f"render.py: unsupported kustomization keys {sorted(unknown)}; extend render.py or use kustomize")
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        sys.exit("render.py: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    labels = {}
    for entry in k.get("labels", []):
        if set(entry) - {"pairs"}:
            sys.exit(f"render.py: unsupported labels options {sorted(set(entry) - {'pairs'})}")
        labels.update(entry["pairs"])
    objects = []
    for res in k.get("resources", []):
        path = os.path.join(directory, res)
        if not os.path.isfile(path):
            sys.exit(f"render.py: resource {res} is not a file (directories are not supported)")
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                meta = doc.setdefault("metadata", {})
                if "namespace" in k and doc.get("kind") not in CLUSTER_SCOPED:
                    meta["namespace"] = k["namespace"]
                if labels:
                    meta.setdefault("labels", {}).update(labels)
                objects.append(doc)
    return objects


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    yaml.safe_dump_all(render(directory), sys.stdout, sort_keys=False, width=120)


if __name__ == "__main__":
    main()
