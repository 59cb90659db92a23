"""The benchmarks of intfa-compile: each module is a script, run from the checkout's root as
``python -m benchmarks.<name>`` (``--smoke`` where it has one: what the tests run on CPU). Results files land in
``benchmarks/results/`` with the device, versions, date and command (``results_file.RunInfo``); ``RESULTS.md``
summarizes them and ``NOTES.md`` keeps the rationale. Not part of the installed library."""
