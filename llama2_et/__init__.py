"""llama2_et: LLaMA2 from its architecture to an ExecuTorch program on a CPU, one module per concept.

A newcomer's map, in the order the book builds it:

- the model: `config` (ModelArgs, presets), `model` (RMSNorm, RoPE, attention, SwiGLU), `kv_cache`,
  `preproc` (RoPE tables, masks, slicing by position);
- checkpoints and text: `checkpoint` (llama2.c .bin/.pt, Meta .pth, Hugging Face), `tokenizer`, `assets`
  (where real files come from); to add a checkpoint format, add a loader to `checkpoint`;
- generation: `generate` (the decoder protocol, samplers, the one prefill/decode loop); to add a
  sampler, extend `generate.Sampler`;
- export: `contract` (what a .pte promises its runtimes: designs, inputs, metadata names, BOS/EOS),
  `designs` (the narrow, preproc and gather programs), `transforms` (source transformations),
  `backends` (one registry entry per backend: to add one, add an entry there), `export` (the pipeline);
- runtimes: `runtime` (a .pte from Python), `cpp/` (the C++ runner, mirroring `contract` in
  `contract.h`), `export_llm` (ExecuTorch's own export_llm and TextLLMRunner), `bench` (measured comparisons);
- training: `data` (TinyStories, tokenizer training, shards), `train` (the training loop);
- `__main__`: the command line. A chapter is a notebook in notebooks/ listed in _toc.yml; it
  imports what it has built from here.
"""
