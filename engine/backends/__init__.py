"""Model backends behind one TextGenerator protocol: transformers, llama.cpp, OpenAI-compatible servers."""
