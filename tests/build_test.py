"""BUILD declares a target for every module, binary, script and test: a file without one would
be left out of the Bazel build and its sandboxed dependency check."""

import ast
import glob
import os
import re

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BuildFileTest(tf.test.TestCase):
    def test_every_python_file_is_declared(self):
        with open(os.path.join(ROOT, "BUILD")) as f:
            declared = set(re.findall(r'"([\w/]+\.py)"', f.read()))
        files = {
            os.path.relpath(p, ROOT)
            for pattern in (
                "tf_amended_darts/*.py",
                "tf_amended_darts/bin/*.py",
                "tests/*.py",
                "scripts/*.py",
                "benchmarks/*.py",
            )
            for p in glob.glob(os.path.join(ROOT, pattern))
        }
        self.assertTrue(files)
        self.assertEqual(sorted(files - declared), [], "files without a BUILD target")
        self.assertEqual(sorted(declared - files), [], "BUILD names files that do not exist")

    def test_every_target_depends_on_the_project_modules_its_files_import(self):
        # Bazel's sandbox only exposes declared (transitive) deps, so a missing one is an
        # ImportError in CI's bazel step; this finds it without Bazel.
        with open(os.path.join(ROOT, "BUILD")) as f:
            build = f.read()
        targets = {}
        for block in re.split(r"\n(?=py_(?:library|binary|test)\()", build)[1:]:
            name = re.search(r'name = "(\w+)"', block).group(1)
            srcs = re.findall(r'"([\w/]+\.py)"', block.split("deps =")[0])
            deps = re.findall(r'":(\w+)"', block)  # deps and data (a binary's runfiles)
            targets[name] = (srcs, deps)
        owner = {src: name for name, (srcs, _) in targets.items() for src in srcs}
        self.assertIn("tf_amended_darts/search_model.py", owner)

        def closure(name, seen):
            for dep in targets.get(name, ((), ()))[1]:
                if dep not in seen:
                    seen.add(dep)
                    closure(dep, seen)
            return seen

        missing = []
        for name, (srcs, _) in sorted(targets.items()):
            available = {s for dep in closure(name, {name}) for s in targets.get(dep, ((), ()))[0]}
            for src in srcs:
                for module in _project_imports(os.path.join(ROOT, src)):
                    path = module.replace(".", "/") + ".py"
                    if path not in owner:
                        path = module.replace(".", "/") + "/__init__.py"
                    if path in owner and path not in available:
                        missing.append(f"{name}: {src} imports {module}")
        self.assertEqual(sorted(set(missing)), [], "BUILD deps missing")


def _project_imports(path):
    """Modules of tf_amended_darts that a file imports (import x.y, from x import y)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.startswith("tf_amended_darts"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "tf_amended_darts"
        ):
            modules.add(node.module)
            modules.update(f"{node.module}.{a.name}" for a in node.names)
    return modules


if __name__ == "__main__":
    tf.test.main()
