"""Task loading: TB2 task directories, datasets and suite JSON files -> `Suite` of
`TaskSpec`s, every error naming the file, the field and what was expected."""
