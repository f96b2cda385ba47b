"""Kernels in Inductor's generated code that store one value to several buffers (call OC found the blocks' input
kernels writing the normed input three times in the scoring graph).

    python3 dupstores.py OUTPUT_CODE.py [...]     # prints each such kernel and a count
"""
import re, sys

found = 0
for path in sys.argv[1:]:
    src = open(path).read()
    parts = re.split(r"\n@triton\.jit\ndef (\w+)\(", src)
    for name, body in zip(parts[1::2], parts[2::2]):
        stores = {}
        for ptr, value in re.findall(r"tl\.store\((\w+) \+ \([^)]*\), (\w+)", body.split("''', device_str")[0]):
            stores.setdefault(value, []).append(ptr)
        dup = {v: p for v, p in stores.items() if len(p) > 1}
        numel = re.search(r"xnumel = (\d+)", body)
        if dup:
            found += 1
            print(f"dupstores kernel:{name} xnumel:{numel.group(1) if numel else '?'} values_stored_more_than_once:{dup}")
print(f"dupstores files:{len(sys.argv) - 1} kernels_with_duplicate_stores:{found}")
