"""llama2_et: LLaMA2 from its architecture to an ExecuTorch program on a CPU, one module per concept.

A newcomer's map, in the order the book builds it:

- the model: `config` (ModelArgs, presets), `model` (RMSNorm, RoPE, attention, SwiGLU, and the
  Transformer with its own RoPE tables and causal mask), `kv_cache`;
- checkpoints and text: `checkpoint/` (one module per format: `llama2c` .bin/.pt, `meta` .pth,
  `hf` Hugging Face; to add a format, add a module there and dispatch to it in its `__init__`),
  `tokenizer`, `assets` (where real files come from);
- generation: `generate` (the decoder protocol, samplers, the one prefill/decode loop, and the
  vocabulary and context checks every caller uses); to add a sampler, extend `generate.Sampler`;
- export: `designs` (the narrow, preproc and gather programs and the inputs each takes), `windows`
  (the preproc design's caller-side slicing), `transforms` (source transformations), `quantize`,
  `backends` (one registry entry per backend: to add one, add an entry there), `kernels` (the
  package's own ExecuTorch operators, filled_attention and write_cache; their kernels are
  `cpp/filled_attention.cpp` and `cpp/write_cache.cpp`),
  `export` (the pipeline), `contract` (the ids and metadata names a .pte and its runtimes share);
- runtimes: `runtime` (a .pte from Python), `cpp/` (the C++ runner; its `contract.h` is generated
  from `contract` at build time), `export_llm` (ExecuTorch's own export_llm and TextLLMRunner),
  `bench` (measured comparisons; `bench.sweep` the scaling sweep over shapes and contexts,
  `bench.command` the `bench` command), `quality` (perplexity);
- training: `data` (TinyStories, tokenizer training, shards), `train` (the loop), `train_config`,
  `optimizer`, `distributed`, `evaluation`, `train_checkpoint`;
- `__main__`: the command line. A chapter is a notebook in notebooks/ listed in _toc.yml; it
  imports what it has built from here.

One home for each concept:

| concept | its one home |
|---|---|
| hyper-parameters, presets | `config.ModelArgs`, `config.preset` |
| RoPE tables, causal mask | `model.rope_tables`, `model.causal_mask`; held by `Transformer` as buffers |
| the forward pass, with or without the cache | `Transformer.forward(tokens, input_pos=None)` |
| the forward pass from tables sliced by a caller | `Transformer.hidden(tokens, cos, sin, mask, input_pos)` |
| the static KV cache | `kv_cache.KVCache` (`MatmulKVCache`: XNNPACK's layout) |
| program designs, their inputs | `designs` (`program`, `SIGNATURES`, `DEFAULT_DESIGN`) |
| "preproc": the design whose caller slices the tables | `designs.PreprocProgram`; the slicing: `windows.TableWindows` |
| swaps for a backend | `transforms`, chosen per backend in `backends` |
| attention over the filled cache positions (own ops) | `kernels` (ops, eager references, library loading), `cpp/filled_attention.cpp`, `cpp/write_cache.cpp`; `transforms.FilledCacheAttention`, `transforms.KernelKVCache` |
| quantization | `quantize` |
| the prefill/decode loop, samplers | `generate.generate`, `generate.Sampler` |
| vocabulary and context checks | `generate.check_vocabulary`, `generate.check_context` |
| BOS/EOS ids (`BOS_ID`) and metadata names (`GET_BOS_ID`, ...) | `contract` (C++: generated `contract.h`) |
"""
