"""Model families: one file each; a model is one class here plus one YAML in conf/model/."""
