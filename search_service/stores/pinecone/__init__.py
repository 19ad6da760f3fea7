"""The Pinecone store (store.py), its error translation and its request packing."""
