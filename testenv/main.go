package main

import (
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	_ "sigs.k8s.io/yaml"
)

func main() {}
