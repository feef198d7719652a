// Command controlplane is a multi-call binary holding a real Kubernetes control plane for
// Tapio's tests: the upstream etcd server, kube-apiserver, kube-controller-manager,
// kube-scheduler and kubelet, each run through its own upstream command, plus `pki`, which writes the
// certificates, token file and kubeconfig the launcher in tests/ starts them with.
//
// Usage: controlplane etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet [flags...]
//
//	controlplane pki DIR
package main

import (
	"context"
	"fmt"
	"os"
	_ "time/tzdata" // for timeZone support in CronJob, as in upstream's main

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as in upstream's main
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as in upstream's main
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as in upstream's main
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: controlplane etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|pki ...")
		os.Exit(2)
	}
	sub := os.Args[1]
	// Each upstream command parses os.Args[1:] itself; drop our sub-command name.
	os.Args = append([]string{sub}, os.Args[2:]...)
	switch sub {
	case "etcd":
		etcdmain.Main(os.Args)
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "pki":
		if len(os.Args) != 2 {
			fmt.Fprintln(os.Stderr, "usage: controlplane pki DIR")
			os.Exit(2)
		}
		if err := writePKI(os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, "pki:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown sub-command %q\n", sub)
		os.Exit(2)
	}
}
